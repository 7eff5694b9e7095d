//! vfio: the kernel interface that lets this process own a PCI device safely.
//!
//! Container (`/dev/vfio/vfio`, one IOMMU address space), group (`/dev/vfio/<n>`, the devices
//! the IOMMU cannot tell apart), device (config space, BAR0). DMA memory is mapped into the
//! container with `VFIO_IOMMU_MAP_DMA` (type 1 v2 IOMMU), so the controller can reach exactly
//! the memory we gave it and nothing else.
//!
//! IOVAs come from a bump allocator starting at 4 GiB rather than being the virtual address:
//! user addresses reach 47 bits, while IOMMUs (QEMU's vIOMMU by default among them) may
//! translate only 39, and the low 4 GiB hold the MSI window.
//!
//! Debian's kernel has no no-IOMMU mode for vfio: servers (and QEMU guests) need the IOMMU on
//! (`intel_iommu=on` or `amd_iommu=on` on the kernel command line; in QEMU
//! `-device intel-iommu` on a q35 machine).
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use log::{debug, info, warn};

use super::memory::{DmaMemory, DmaRegion};
use super::regs::RegisterAccess;
use crate::storage::StorageError;

const SYSFS_PCI: &str = "/sys/bus/pci/devices";
/// PCI class of an NVMe controller: mass storage, non-volatile memory, NVM Express.
const NVME_CLASS: &str = "0x010802";

// ioctl numbers from <linux/vfio.h>: _IO(';', 100 + n).
const fn vfio_io(n: u64) -> u64 {
    (b';' as u64) << 8 | (100 + n)
}
const VFIO_GET_API_VERSION: u64 = vfio_io(0);
const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1V2_IOMMU: u64 = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 4;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;
const BAR0_REGION_INDEX: u32 = 0;
const CONFIG_REGION_INDEX: u32 = 7;

/// PCI command register: memory space and bus master enable.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

const HUGEPAGE: usize = 2 << 20;
const FIRST_IOVA: u64 = 1 << 32;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

fn err(context: impl std::fmt::Display, e: io::Error) -> StorageError {
    StorageError::Device(format!("vfio: {context}: {e}"))
}

/// `ioctl` with an integer or pointer argument; returns the non-negative result.
///
/// # Safety
/// `arg` must be what the ioctl `request` expects (an integer, or a pointer to a live struct
/// of the right layout).
unsafe fn ioctl(fd: &File, request: u64, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: forwarded from the caller's contract.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The IOMMU address space: every DMA mapping of the process for the devices opened in it.
///
/// Devices opened into one container ([`VfioDevice::open_in`]) share its mappings: memory
/// mapped for one of them is reachable by all, so several NVMe drives can read into one
/// buffer pool. Each device's IOMMU group is attached once, the first attachment choosing
/// the type 1 v2 IOMMU; the kernel maps what the container already holds for groups that
/// join later.
pub struct Container {
    file: File,
    next_iova: AtomicU64,
    /// The attached groups by number, kept open while any mapping exists: closing a group
    /// detaches it from the container.
    groups: Mutex<Vec<(String, Arc<File>)>>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups: Vec<String> = self.groups.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(g, _)| g.clone()).collect();
        f.debug_struct("Container").field("groups", &groups).finish()
    }
}

fn rw() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    o
}

impl Container {
    /// A new, empty container (`/dev/vfio/vfio`) with the type 1 v2 IOMMU available.
    pub fn open() -> Result<Arc<Container>, StorageError> {
        let container = rw().open("/dev/vfio/vfio").map_err(|e| err("open /dev/vfio/vfio (is vfio-pci loaded?)", e))?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument.
        let version = unsafe { ioctl(&container, VFIO_GET_API_VERSION, 0) }.map_err(|e| err("GET_API_VERSION", e))?;
        if version != VFIO_API_VERSION {
            return Err(StorageError::Device(format!("vfio: unknown API version {version}")));
        }
        // SAFETY: VFIO_CHECK_EXTENSION takes the extension number as an integer.
        let type1v2 = unsafe { ioctl(&container, VFIO_CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU as libc::c_ulong) }
            .map_err(|e| err("CHECK_EXTENSION", e))?;
        if type1v2 != 1 {
            return Err(StorageError::Device("vfio: the kernel lacks the type 1 v2 IOMMU backend".into()));
        }
        Ok(Arc::new(Container { file: container, next_iova: AtomicU64::new(FIRST_IOVA), groups: Mutex::new(Vec::new()) }))
    }

    /// IOMMU group `group_id`, attached to this container (opened and attached the first
    /// time; the first group of the container also sets its IOMMU type).
    fn group(&self, group_id: &str) -> Result<Arc<File>, StorageError> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, g)) = groups.iter().find(|(id, _)| id == group_id) {
            return Ok(g.clone());
        }
        let group_path = format!("/dev/vfio/{group_id}");
        let group = rw().open(&group_path).map_err(|e| err(format!("open {group_path}"), e))?;
        let mut status = GroupStatus { argsz: std::mem::size_of::<GroupStatus>() as u32, flags: 0 };
        // SAFETY: VFIO_GROUP_GET_STATUS fills a vfio_group_status, which GroupStatus mirrors.
        unsafe { ioctl(&group, VFIO_GROUP_GET_STATUS, &mut status as *mut GroupStatus as libc::c_ulong) }
            .map_err(|e| err("GROUP_GET_STATUS", e))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(StorageError::Device(format!(
                "vfio: IOMMU group {group_id} is not viable: bind every device in \
                 /sys/kernel/iommu_groups/{group_id}/devices to vfio-pci"
            )));
        }
        let container_fd: libc::c_int = self.file.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER takes a pointer to the container fd.
        unsafe { ioctl(&group, VFIO_GROUP_SET_CONTAINER, &container_fd as *const libc::c_int as libc::c_ulong) }
            .map_err(|e| err(format!("GROUP_SET_CONTAINER of group {group_id}"), e))?;
        if groups.is_empty() {
            // SAFETY: VFIO_SET_IOMMU takes the IOMMU type as an integer.
            unsafe { ioctl(&self.file, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU as libc::c_ulong) }
                .map_err(|e| err("SET_IOMMU type1v2", e))?;
        }
        let group = Arc::new(group);
        groups.push((group_id.to_string(), group.clone()));
        Ok(group)
    }

    fn map_dma(&self, vaddr: *mut u8, len: usize) -> Result<u64, StorageError> {
        let iova = self.next_iova.fetch_add(len.div_ceil(HUGEPAGE) as u64 * HUGEPAGE as u64, Ordering::Relaxed);
        let map = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: len as u64,
        };
        // SAFETY: VFIO_IOMMU_MAP_DMA takes a pointer to a vfio_iommu_type1_dma_map, which
        // DmaMap mirrors; the kernel pins the pages for as long as the mapping exists.
        unsafe { ioctl(&self.file, VFIO_IOMMU_MAP_DMA, &map as *const DmaMap as libc::c_ulong) }
            .map_err(|e| err(format!("MAP_DMA of {len} bytes at iova {iova:#x}"), e))?;
        Ok(iova)
    }

    fn unmap_dma(&self, iova: u64, len: usize) {
        let unmap = DmaUnmap { argsz: std::mem::size_of::<DmaUnmap>() as u32, flags: 0, iova, size: len as u64 };
        // SAFETY: VFIO_IOMMU_UNMAP_DMA takes a pointer to a vfio_iommu_type1_dma_unmap.
        if let Err(e) = unsafe { ioctl(&self.file, VFIO_IOMMU_UNMAP_DMA, &unmap as *const DmaUnmap as libc::c_ulong) } {
            warn!("vfio: UNMAP_DMA at {iova:#x}: {e}");
        }
    }
}

/// DMA memory for one device: hugepages (2 MiB) where the system has them, else locked
/// ordinary pages, mapped into the container.
pub struct VfioDma {
    container: Arc<Container>,
}

/// Anonymous memory: 2 MiB hugepages for buffer pools (fewer IOMMU and TLB entries), small
/// pages for rings and PRP lists (a hugepage each would waste the reserved pool). Returns the
/// mapping and its length.
fn mmap_dma_memory(len: usize) -> Result<(NonNull<u8>, usize), StorageError> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    if len >= HUGEPAGE / 2 {
        let huge_len = len.div_ceil(HUGEPAGE) * HUGEPAGE;
        let huge = libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT);
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), huge_len, prot, flags | huge, -1, 0) };
        if p != libc::MAP_FAILED {
            debug!("vfio: {huge_len} bytes of DMA memory in 2 MiB hugepages");
            return Ok((NonNull::new(p as *mut u8).expect("mmap returned non-null"), huge_len));
        }
        info!("vfio: no 2 MiB hugepages for {huge_len} bytes ({}), using locked 4 KiB pages", io::Error::last_os_error());
    }
    let small_len = len.div_ceil(4096) * 4096;
    // SAFETY: as above.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), small_len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(err(format!("mmap of {small_len} bytes"), io::Error::last_os_error()));
    }
    // SAFETY: p..p+small_len is the mapping we just made. Locking keeps it resident; MAP_DMA
    // pins it anyway, so a failure here only costs a warning.
    if unsafe { libc::mlock(p, small_len) } != 0 {
        debug!("vfio: mlock: {}", io::Error::last_os_error());
    }
    Ok((NonNull::new(p as *mut u8).expect("mmap returned non-null"), small_len))
}

impl DmaMemory for VfioDma {
    fn alloc(&self, len: usize) -> Result<DmaRegion, StorageError> {
        let (ptr, len) = mmap_dma_memory(len.max(1))?;
        let iova = match self.container.map_dma(ptr.as_ptr(), len) {
            Ok(iova) => iova,
            Err(e) => {
                // SAFETY: unmapping the mapping made above, never handed out.
                unsafe { libc::munmap(ptr.as_ptr() as *mut libc::c_void, len) };
                return Err(e);
            }
        };
        let container = self.container.clone();
        let release = Box::new(move |p: NonNull<u8>, l: usize| {
            container.unmap_dma(iova, l);
            // SAFETY: the device can no longer reach the memory (unmapped above) and its
            // owner is gone; this is the mapping mmap_dma_memory returned.
            unsafe { libc::munmap(p.as_ptr() as *mut libc::c_void, l) };
        });
        // SAFETY: ptr..ptr+len is our zero-filled anonymous mapping, mapped at iova.
        Ok(unsafe { DmaRegion::new(ptr, iova, len, release) })
    }
}

/// BAR0 mapped into our address space.
pub struct Bar0 {
    ptr: NonNull<u8>,
    len: usize,
    /// The device fd (keeps the mapping's device open; config space for stop_dma).
    device: File,
    config_offset: u64,
}

// SAFETY: the mapping is device memory valid until Drop; every access is a single volatile
// load or store, which the device serialises itself.
unsafe impl Send for Bar0 {}
// SAFETY: as above; &self accesses do not create Rust references into the mapping.
unsafe impl Sync for Bar0 {}

impl RegisterAccess for Bar0 {
    fn read32(&self, offset: usize) -> u32 {
        if !offset.is_multiple_of(4) || offset + 4 > self.len {
            warn!("nvme: register read at {offset:#x} outside BAR0 ({} bytes)", self.len);
            return u32::MAX;
        }
        // SAFETY: in bounds and aligned (checked above) inside the live BAR mapping.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(offset) as *const u32) }
    }

    fn write32(&self, offset: usize, value: u32) {
        if !offset.is_multiple_of(4) || offset + 4 > self.len {
            warn!("nvme: register write at {offset:#x} outside BAR0 ({} bytes)", self.len);
            return;
        }
        // SAFETY: in bounds and aligned (checked above) inside the live BAR mapping.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(offset) as *mut u32, value) }
    }

    fn stop_dma(&self) -> bool {
        set_bus_master(&self.device, self.config_offset, false).is_ok()
    }
}

/// Switch memory decoding on and bus mastering on or off in the PCI command register.
fn set_bus_master(device: &File, config_offset: u64, on: bool) -> Result<(), StorageError> {
    let mut cmd = [0u8; 2];
    device
        .read_exact_at(&mut cmd, config_offset + PCI_COMMAND)
        .map_err(|e| err("read PCI command register", e))?;
    let mut value = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY;
    if on {
        value |= PCI_COMMAND_MASTER;
    } else {
        value &= !PCI_COMMAND_MASTER;
    }
    device
        .write_all_at(&value.to_le_bytes(), config_offset + PCI_COMMAND)
        .map_err(|e| err("write PCI command register", e))
}

impl Drop for Bar0 {
    fn drop(&mut self) {
        // SAFETY: the mapping made in VfioDevice::into_parts; no accessor outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// What the driver needs of an opened device: its registers and DMA memory.
pub type DriverParts = (Arc<dyn RegisterAccess>, Arc<dyn DmaMemory>);

/// A device opened through its vfio group, with DMA set up.
pub struct VfioDevice {
    pci: String,
    device: File,
    container: Arc<Container>,
}

fn iommu_group(pci: &str) -> Result<String, StorageError> {
    let link = Path::new(SYSFS_PCI).join(pci).join("iommu_group");
    let target = std::fs::read_link(&link).map_err(|_| {
        StorageError::Device(format!(
            "{pci} has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on) and bind the \
             device to vfio-pci (this kernel has no vfio no-IOMMU mode)"
        ))
    })?;
    Ok(target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
}

impl VfioDevice {
    /// Open `pci` (already bound to vfio-pci) in a container of its own: container with a
    /// type 1 v2 IOMMU, group, device fd, bus mastering on.
    pub fn open(pci: &str) -> Result<VfioDevice, StorageError> {
        Self::open_in(&Container::open()?, pci)
    }

    /// Open `pci` (already bound to vfio-pci) in `container`, whose DMA mappings it then
    /// shares with the other devices opened there.
    pub fn open_in(container: &Arc<Container>, pci: &str) -> Result<VfioDevice, StorageError> {
        let group_id = iommu_group(pci)?;
        let group = container.group(&group_id)?;
        let name = CString::new(pci).map_err(|_| StorageError::Device(format!("bad PCI address {pci:?}")))?;
        // SAFETY: VFIO_GROUP_GET_DEVICE_FD takes a NUL-terminated device name; it returns a new fd.
        let fd = unsafe { ioctl(&group, VFIO_GROUP_GET_DEVICE_FD, name.as_ptr() as libc::c_ulong) }
            .map_err(|e| err(format!("GROUP_GET_DEVICE_FD {pci}"), e))?;
        // SAFETY: fd is a fresh descriptor the kernel gave us and nothing else owns.
        let device = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };

        let dev = VfioDevice { pci: pci.to_string(), device, container: container.clone() };
        dev.enable_bus_master()?;
        info!("vfio: {pci} opened (IOMMU group {group_id})");
        Ok(dev)
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, StorageError> {
        let mut info = RegionInfo { argsz: std::mem::size_of::<RegionInfo>() as u32, index, ..Default::default() };
        // SAFETY: VFIO_DEVICE_GET_REGION_INFO fills a vfio_region_info, which RegionInfo mirrors.
        unsafe { ioctl(&self.device, VFIO_DEVICE_GET_REGION_INFO, &mut info as *mut RegionInfo as libc::c_ulong) }
            .map_err(|e| err(format!("GET_REGION_INFO {index}"), e))?;
        Ok(info)
    }

    /// Memory decoding and bus mastering on, so BAR0 answers and the device may DMA.
    fn enable_bus_master(&self) -> Result<(), StorageError> {
        let config = self.region_info(CONFIG_REGION_INDEX)?;
        set_bus_master(&self.device, config.offset, true)
    }

    /// Map BAR0 and hand out register access and DMA memory for the driver.
    pub fn into_parts(self) -> Result<DriverParts, StorageError> {
        let bar = self.region_info(BAR0_REGION_INDEX)?;
        if bar.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || bar.size < 0x2000 {
            return Err(StorageError::Device(format!(
                "vfio: {}: BAR0 is not mappable (flags {:#x}, {} bytes)",
                self.pci, bar.flags, bar.size
            )));
        }
        let len = bar.size as usize;
        // SAFETY: mapping the device's BAR0 region at the offset vfio gave for it; a new
        // shared mapping does not touch existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                bar.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(err("mmap BAR0", io::Error::last_os_error()));
        }
        let config_offset = self.region_info(CONFIG_REGION_INDEX)?.offset;
        let bar0 = Bar0 {
            ptr: NonNull::new(p as *mut u8).expect("mmap returned non-null"),
            len,
            device: self.device,
            config_offset,
        };
        Ok((Arc::new(bar0), Arc::new(VfioDma { container: self.container })))
    }
}

/// The full lower-case form of a PCI address "0000:00:04.0" (or the short "00:04.0", domain 0
/// assumed), or None if it is not one. Only its form is checked.
pub fn normalize_pci_address(spec: &str) -> Option<String> {
    let full = if spec.matches(':').count() == 1 { format!("0000:{spec}") } else { spec.to_string() };
    let well_formed = full.len() == 12
        && full.char_indices().all(|(i, c)| match i {
            4 | 7 => c == ':',
            10 => c == '.',
            11 => ('0'..='7').contains(&c),
            _ => c.is_ascii_hexdigit(),
        });
    well_formed.then(|| full.to_ascii_lowercase())
}

/// "0000:00:04.0" (or the short "00:04.0", domain 0 assumed), checked to exist.
pub fn check_pci_address(spec: &str) -> Result<String, StorageError> {
    let Some(full) = normalize_pci_address(spec) else {
        return Err(StorageError::Device(format!("bad PCI address {spec:?}: expected e.g. 0000:00:04.0")));
    };
    if !Path::new(SYSFS_PCI).join(&full).exists() {
        return Err(StorageError::Device(format!("no PCI device {full}")));
    }
    Ok(full)
}

/// Refuses a PCI device that is not an NVMe controller (class 01:08:02), before anything
/// binds or touches it.
pub fn check_nvme_class(pci: &str) -> Result<(), StorageError> {
    let path = Path::new(SYSFS_PCI).join(pci).join("class");
    let class = std::fs::read_to_string(&path).map_err(|e| err(path.display(), e))?;
    if class.trim() != NVME_CLASS {
        return Err(StorageError::Device(format!(
            "{pci} is not an NVMe controller (PCI class {}, an NVMe controller is {NVME_CLASS})",
            class.trim()
        )));
    }
    Ok(())
}

/// The kernel driver bound to `pci`, if any.
pub fn current_driver(pci: &str) -> Option<String> {
    let link = std::fs::read_link(Path::new(SYSFS_PCI).join(pci).join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// The first NVMe controller (PCI class 0x010802) bound to vfio-pci or to no driver.
pub fn find_auto() -> Result<String, StorageError> {
    find_auto_except(&[])
}

/// [`find_auto`], skipping the controllers in `taken` (PCI addresses).
pub fn find_auto_except(taken: &[String]) -> Result<String, StorageError> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(SYSFS_PCI)
        .map_err(|e| err(SYSFS_PCI, e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    candidates.sort();
    let mut seen = Vec::new();
    for dev in candidates {
        let class = std::fs::read_to_string(dev.join("class")).unwrap_or_default();
        if class.trim() != NVME_CLASS {
            continue;
        }
        let pci = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if taken.contains(&pci) {
            seen.push(format!("{pci} (already in use)"));
            continue;
        }
        match current_driver(&pci).as_deref() {
            None | Some("vfio-pci") => return Ok(pci),
            Some(other) => seen.push(format!("{pci} (bound to {other})")),
        }
    }
    Err(StorageError::Device(if seen.is_empty() {
        "nvme:auto: no NVMe controller found".to_string()
    } else {
        format!("nvme:auto: every NVMe controller is in use or bound to a kernel driver: {}", seen.join(", "))
    }))
}

fn sysfs_write(path: &Path, value: &str) -> Result<(), StorageError> {
    std::fs::write(path, value).map_err(|e| err(format!("write {value:?} to {}", path.display()), e))
}

/// Bind `pci` to vfio-pci (driver_override + drivers_probe), unbinding its current driver.
/// Needs root and the vfio-pci module loaded.
pub fn bind_to_vfio_pci(pci: &str) -> Result<(), StorageError> {
    let dev = Path::new(SYSFS_PCI).join(pci);
    if current_driver(pci).as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    // vfio-pci refuses devices without a group; say why before it does.
    iommu_group(pci)?;
    if !Path::new("/sys/bus/pci/drivers/vfio-pci").exists() {
        return Err(StorageError::Device("vfio-pci is not loaded (modprobe vfio-pci)".into()));
    }
    sysfs_write(&dev.join("driver_override"), "vfio-pci")?;
    if let Some(driver) = current_driver(pci) {
        info!("vfio: unbinding {pci} from {driver}");
        sysfs_write(&dev.join("driver").join("unbind"), pci)?;
    }
    sysfs_write(Path::new("/sys/bus/pci/drivers_probe"), pci)?;
    match current_driver(pci).as_deref() {
        Some("vfio-pci") => Ok(()),
        other => Err(StorageError::Device(format!("{pci}: still bound to {other:?} after drivers_probe"))),
    }
}

/// Make sure `pci` is bound to vfio-pci; take it from a kernel driver only if allowed.
pub fn ensure_bound_to_vfio(pci: &str, take_from_kernel: bool) -> Result<(), StorageError> {
    match current_driver(pci) {
        Some(d) if d == "vfio-pci" => Ok(()),
        Some(d) if !take_from_kernel => Err(StorageError::Device(format!(
            "{pci} is bound to the kernel driver {d}; unbind it first or allow taking it \
             (echo {pci} > /sys/bus/pci/devices/{pci}/driver/unbind)"
        ))),
        _ => bind_to_vfio_pci(pci),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_headers() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
        assert_eq!(std::mem::size_of::<RegionInfo>(), 32);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
    }

    #[test]
    fn pci_addresses_are_checked() {
        assert!(check_pci_address("nonsense").unwrap_err().to_string().contains("bad PCI address"));
        assert!(check_pci_address("0000:00:04.9").is_err());
        assert!(check_pci_address("0000:ff:1f.7").unwrap_err().to_string().contains("no PCI device"));
    }

    #[test]
    fn only_nvme_controllers_pass_the_class_check() {
        assert!(check_nvme_class("0000:ff:1f.7").is_err());
        // Any PCI device of this machine that is not an NVMe controller is refused by name.
        let other = std::fs::read_dir(SYSFS_PCI).into_iter().flatten().flatten().find(|e| {
            std::fs::read_to_string(e.path().join("class")).is_ok_and(|c| c.trim() != NVME_CLASS)
        });
        if let Some(dev) = other {
            let pci = dev.file_name().to_string_lossy().into_owned();
            let e = check_nvme_class(&pci).unwrap_err().to_string();
            assert!(e.contains("is not an NVMe controller"), "{e}");
        }
    }

    #[test]
    fn missing_iommu_group_says_how_to_fix_it() {
        let e = iommu_group("0000:ff:1f.7").unwrap_err().to_string();
        assert!(e.contains("intel_iommu=on") && e.contains("vfio-pci"), "{e}");
    }

    #[test]
    fn dma_memory_falls_back_from_hugepages() {
        // Whatever this machine has, 8 KiB of DMA memory comes back writable and aligned.
        let (p, len) = mmap_dma_memory(8192).unwrap();
        assert!(len >= 8192 && (p.as_ptr() as usize).is_multiple_of(4096));
        // SAFETY: the mapping is ours and len bytes long.
        unsafe {
            p.as_ptr().write_bytes(0xa5, len);
            libc::munmap(p.as_ptr() as *mut libc::c_void, len);
        }
    }
}
