//! A Linux TAP device as the appliance's port: it owns the /dev/net/tun file descriptor, the
//! receive buffer pool, and the port's counters.
//!
//! The kernel side of the TAP is the far end of the wire: the appliance is a separate host
//! behind it, so it uses its own locally administered MAC, never the kernel interface's.
//! Each read(2) returns one frame and each writev(2) sends one; TAP has no batched send, so
//! [`TapNic::tx_gather`] writes at once and [`TapNic::tx_flush`] only reports the count.
//!
//! The device is opened with virtio-net headers (`IFF_VNET_HDR`): every frame in either
//! direction is preceded by a 10-byte `struct virtio_net_hdr`. On transmit it carries the
//! offloads ([`Nic::tx_tcp`]): the kernel fills in TCP checksums and takes TCP frames of up to
//! 64 KiB, which it treats like a frame its own receive coalescing made (one write(2) for up
//! to 45 segments). On receive only checksum offload is on (`TUNSETOFFLOAD` `TUN_F_CSUM`):
//! the kernel hands over whole frames of at most one MTU, and leaves the TCP checksum of its
//! own segments unfilled (`VIRTIO_NET_HDR_F_NEEDS_CSUM`; they never crossed a wire) or says
//! it verified it (`VIRTIO_NET_HDR_F_DATA_VALID`): the frame's [`super::FrameBuf::rx_checksums`]
//! tells the stack, which then does not sum it again.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::frame_pool::{FramePool, PoolFrame};
use super::checksum;
use super::offload::{TcpTx, MAX_TSO_PAYLOAD};
use super::{LinkInfo, Nic, NicCounters, NicError, RxChecksums, RxVerdict, TxOffloads};

/// Receive buffers per TAP port.
pub const TAP_RX_BUFFERS: usize = 512;
/// Smallest receive buffer; larger MTUs get mtu + 18 rounded up to 64 bytes.
pub const TAP_MIN_BUF_SIZE: usize = 2048;
const ETH_HLEN: usize = 14;
/// Room for one 802.1Q tag on received frames.
const VLAN_TAG_LEN: usize = 4;
/// Gather lists longer than this are copied into a scratch buffer before the write.
const MAX_IOVECS: usize = 32;
/// `struct virtio_net_hdr` (without the mergeable-buffers count): the TAP default size.
const VNET_HDR_LEN: usize = 10;
const VNET_HDR_F_NEEDS_CSUM: u8 = 1;
const VNET_HDR_F_DATA_VALID: u8 = 2;
/// Where a TCP header keeps its checksum (a partial checksum's `csum_offset`).
const TCP_CSUM_OFFSET: u16 = 16;
/// TUNSETOFFLOAD flag: the reader takes frames with partial checksums.
const TUN_F_CSUM: libc::c_ulong = 0x01;
const VNET_HDR_GSO_NONE: u8 = 0;
const VNET_HDR_GSO_TCPV4: u8 = 1;
/// TUNSETOFFLOAD (_IOW('T', 208, unsigned int)): what the kernel may hand us.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// Largest frame written: headers and the largest TCP payload of one offloaded frame.
const MAX_TX_FRAME: usize = ETH_HLEN + 65535;

/// The 10-byte virtio-net header of a frame (little-endian fields, as the TAP expects on x86
/// and every little-endian host; the kernel reads it in the device's native order).
fn vnet_header(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}

/// TUNSETOFFLOAD: which offloads the kernel may use in the frames it hands us.
fn set_offload(fd: &OwnedFd, flags: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as _, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a received frame's virtio-net header says of its checksums: the kernel verified the
/// TCP checksum, or left it unfilled because the segment comes from its own stack on this
/// host (a partial checksum at the TCP header's checksum field): either way the data is
/// intact. Anything else (and always the IPv4 header) is for the stack to check.
fn rx_checksums_of(vnet: &[u8; VNET_HDR_LEN]) -> RxChecksums {
    let flags = vnet[0];
    let csum_offset = u16::from_le_bytes([vnet[8], vnet[9]]);
    let tcp_partial = flags & VNET_HDR_F_NEEDS_CSUM != 0 && csum_offset == TCP_CSUM_OFFSET;
    let l4 = if tcp_partial || flags & VNET_HDR_F_DATA_VALID != 0 { RxVerdict::Good } else { RxVerdict::Unchecked };
    RxChecksums { ipv4: RxVerdict::Unchecked, l4 }
}

/// `struct ifreq` with the union read as interface flags.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `struct ifreq` with the union read as an int (MTU).
#[repr(C)]
struct IfReqInt {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

/// `struct ifreq` with the union read as a `struct sockaddr` (hardware or IPv4 address).
#[repr(C)]
struct IfReqAddr {
    name: [libc::c_char; libc::IFNAMSIZ],
    family: libc::sa_family_t,
    /// sa_data: a MAC, or for AF_INET the port (2 bytes) then the address (4 bytes).
    data: [u8; 14],
    _pad: [u8; 8],
}

/// The `struct ifreq` layouts above; only they may be passed to [`ifreq_ioctl`].
trait IfReq {}
impl IfReq for IfReqFlags {}
impl IfReq for IfReqInt {}
impl IfReq for IfReqAddr {}

/// An interface ioctl (TUNSETIFF, SIOC[GS]IF*) that reads and/or writes one `struct ifreq`.
fn ifreq_ioctl<T: IfReq>(fd: &OwnedFd, request: libc::c_ulong, req: &mut T) -> io::Result<()> {
    // SAFETY: every IfReq type is a repr(C) struct ifreq (40 bytes) and the requests we pass
    // read or write at most that struct, which is borrowed mutably across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, req as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ifname_field(ifname: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], NicError> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty()
        || bytes.len() >= libc::IFNAMSIZ
        || bytes
            .iter()
            .any(|&b| matches!(b, 0 | b'/' | b':' | b'%') || b.is_ascii_whitespace())
    {
        return Err(NicError::Config(format!(
            "invalid interface name {ifname:?}: 1 to {} bytes, no '/', ':', '%', NUL or spaces",
            libc::IFNAMSIZ - 1
        )));
    }
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, &src) in name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(name)
}

/// A stable locally administered unicast MAC derived from the interface name (FNV-1a).
pub fn mac_for_ifname(ifname: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in ifname.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let h = hash.to_be_bytes();
    [0x02, h[0] ^ h[5], h[1] ^ h[6], h[2] ^ h[7], h[3], h[4]]
}

const TUNSETIFF_WHAT: &str = "TUNSETIFF";

/// Whether the existing TUN/TAP device `ifname` of this network namespace takes several
/// queues (`IFF_MULTI_QUEUE` in its sysfs `tun_flags`); None if there is no such device
/// (the first [`TapNic::open_queue`] then creates it either way).
pub fn existing_multi_queue(ifname: &str) -> Option<bool> {
    ifname_field(ifname).ok()?;
    let flags = std::fs::read_to_string(format!("/sys/class/net/{ifname}/tun_flags")).ok()?;
    let flags = i64::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
    Some(flags & i64::from(libc::IFF_MULTI_QUEUE) != 0)
}

/// Whether `e` is TUNSETIFF refusing because the device exists with the other queue mode
/// (single queue asked of a `multi_queue` device, or the reverse): EINVAL from the attach.
pub fn is_queue_mode_mismatch(e: &NicError) -> bool {
    matches!(e, NicError::Open { what, source }
        if what.starts_with(TUNSETIFF_WHAT) && source.raw_os_error() == Some(libc::EINVAL))
}

fn open_error(what: &str, ifname: &str, source: io::Error) -> NicError {
    NicError::Open {
        what: format!("{what} ({ifname})"),
        source,
    }
}

/// An AF_INET datagram socket: the handle for interface ioctls in this network namespace.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a socket we just created and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// One TAP interface driven without blocking.
pub struct TapNic {
    fd: OwnedFd,
    ifname: String,
    mac: [u8; 6],
    mtu: usize,
    pool: FramePool,
    /// For gather lists longer than MAX_IOVECS; sized at open.
    tx_scratch: Box<[u8]>,
    /// Frames written since the last tx_flush.
    tx_since_flush: usize,
    counters: NicCounters,
    /// The kernel may leave TCP checksums unfilled (`TUN_F_CSUM`) and each frame carries
    /// what its virtio-net header says of them; off, the kernel fills them all in.
    rx_verdicts: bool,
}

impl std::fmt::Debug for TapNic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapNic")
            .field("ifname", &self.ifname)
            .field("mtu", &self.mtu)
            .field("pool", &self.pool)
            .finish()
    }
}

impl TapNic {
    /// Attaches to the TAP interface `ifname` (creating it if it does not exist), brings it up
    /// and reads its MTU. One queue: a device made with `multi_queue` gets one of its queues.
    pub fn open(ifname: &str) -> Result<TapNic, NicError> {
        match Self::open_queue(ifname, false) {
            Err(e) if is_queue_mode_mismatch(&e) => Self::open_queue(ifname, true),
            r => r,
        }
    }

    /// Attaches one queue of `ifname`. With `multi_queue` the device is (or is made) a
    /// multi-queue TAP (`IFF_MULTI_QUEUE`, `ip tuntap add ... multi_queue`) and each call
    /// attaches another queue, one per core: the kernel sends each flow's frames to the queue
    /// that last wrote a frame of that flow (its hash otherwise), so a connection stays on the
    /// core that answered its SYN. A device made the other way refuses with an error for which
    /// [`is_queue_mode_mismatch`] holds.
    pub fn open_queue(ifname: &str, multi_queue: bool) -> Result<TapNic, NicError> {
        let name = ifname_field(ifname)?;
        let path = CString::new("/dev/net/tun").map_err(|e| NicError::Config(e.to_string()))?;
        // SAFETY: path is a valid NUL-terminated string; open has no other preconditions.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(open_error(
                "/dev/net/tun",
                ifname,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: raw is a file descriptor we just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut req = IfReqFlags {
            name,
            flags: (libc::IFF_TAP
                | libc::IFF_NO_PI
                | libc::IFF_VNET_HDR
                | if multi_queue { libc::IFF_MULTI_QUEUE } else { 0 }) as libc::c_short,
            _pad: [0; 22],
        };
        ifreq_ioctl(&fd, libc::TUNSETIFF as _, &mut req)
            .map_err(|e| open_error(TUNSETIFF_WHAT, ifname, e))?;
        // Receive checksum offload only: frames from the kernel come whole (no GSO), their
        // TCP checksums possibly left unfilled ([`rx_checksums_of`]).
        set_offload(&fd, TUN_F_CSUM).map_err(|e| open_error("TUNSETOFFLOAD", ifname, e))?;

        // Interface ioctls go through any socket of the current network namespace.
        let sock = control_socket().map_err(|e| open_error("control socket", ifname, e))?;
        let mut flags = IfReqFlags {
            name,
            flags: 0,
            _pad: [0; 22],
        };
        ifreq_ioctl(&sock, libc::SIOCGIFFLAGS, &mut flags)
            .map_err(|e| open_error("SIOCGIFFLAGS", ifname, e))?;
        flags.flags |= libc::IFF_UP as libc::c_short;
        ifreq_ioctl(&sock, libc::SIOCSIFFLAGS, &mut flags)
            .map_err(|e| open_error("SIOCSIFFLAGS (bring up)", ifname, e))?;

        let mut mtu_req = IfReqInt {
            name,
            value: 0,
            _pad: [0; 20],
        };
        ifreq_ioctl(&sock, libc::SIOCGIFMTU, &mut mtu_req)
            .map_err(|e| open_error("SIOCGIFMTU", ifname, e))?;
        let mtu = usize::try_from(mtu_req.value)
            .ok()
            .filter(|&m| (68..=65535).contains(&m))
            .ok_or_else(|| NicError::Config(format!("{ifname}: unusable MTU {}", mtu_req.value)))?;

        let mut hw = IfReqAddr {
            name,
            family: 0,
            data: [0; 14],
            _pad: [0; 8],
        };
        let kernel_mac = ifreq_ioctl(&sock, libc::SIOCGIFHWADDR, &mut hw)
            .ok()
            .map(|()| {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&hw.data[..6]);
                mac
            });
        let mut mac = mac_for_ifname(ifname);
        if Some(mac) == kernel_mac {
            // Two hosts on one wire must not share a MAC.
            mac[5] ^= 0x01;
        }

        let buf_size = (mtu + ETH_HLEN + VLAN_TAG_LEN)
            .div_ceil(64)
            .max(TAP_MIN_BUF_SIZE / 64)
            * 64;
        log::info!("tap {ifname}: mtu {mtu}, mac {mac:02x?}, {TAP_RX_BUFFERS} rx buffers of {buf_size} bytes");
        Ok(TapNic {
            fd,
            ifname: ifname.to_owned(),
            mac,
            mtu,
            pool: FramePool::new(TAP_RX_BUFFERS, buf_size),
            tx_scratch: vec![0u8; VNET_HDR_LEN + MAX_TX_FRAME].into_boxed_slice(),
            tx_since_flush: 0,
            counters: NicCounters::default(),
            rx_verdicts: true,
        })
    }

    /// The kernel interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Receive buffers free right now (the pool holds [`TAP_RX_BUFFERS`]).
    pub fn rx_buffers_free(&self) -> usize {
        self.pool.available()
    }

    /// Writes one frame and counts it: false when the device queue is full or the write failed.
    fn send(&mut self, vnet: &[u8; VNET_HDR_LEN], parts: &[&[u8]], total: usize) -> bool {
        match self.write_frame(vnet, parts, total) {
            Ok(true) => {
                self.counters.tx_packets += 1;
                self.counters.tx_bytes += total as u64;
                self.tx_since_flush += 1;
                true
            }
            // The device queue is full: the caller sends it again later.
            Ok(false) => false,
            Err(err) => {
                // Dropped and counted: the same write would fail again.
                self.counters.tx_errors += 1;
                log::warn!("tap {}: write: {err}", self.ifname);
                true
            }
        }
    }

    /// Writes one frame behind its virtio-net header; Ok(false) when the device queue is full.
    fn write_frame(&mut self, vnet: &[u8; VNET_HDR_LEN], parts: &[&[u8]], total: usize) -> io::Result<bool> {
        let written = if parts.len() < MAX_IOVECS {
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOVECS];
            iov[0] = libc::iovec {
                iov_base: vnet.as_ptr() as *mut libc::c_void,
                iov_len: VNET_HDR_LEN,
            };
            for (slot, part) in iov[1..].iter_mut().zip(parts) {
                *slot = libc::iovec {
                    iov_base: part.as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                };
            }
            // SAFETY: the first parts.len() + 1 iovecs point at live slices borrowed for the
            // call; writev only reads them.
            unsafe {
                libc::writev(
                    self.fd.as_raw_fd(),
                    iov.as_ptr(),
                    (parts.len() + 1) as libc::c_int,
                )
            }
        } else {
            self.tx_scratch[..VNET_HDR_LEN].copy_from_slice(vnet);
            let mut at = VNET_HDR_LEN;
            for part in parts {
                self.tx_scratch[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            // SAFETY: tx_scratch holds at least `total` + header initialised bytes; write only
            // reads them.
            unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    self.tx_scratch.as_ptr() as *const libc::c_void,
                    VNET_HDR_LEN + total,
                )
            }
        };
        if written < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::WouldBlock {
                Ok(false)
            } else {
                Err(err)
            };
        }
        if written as usize != VNET_HDR_LEN + total {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write {written} of {total}"),
            ));
        }
        Ok(true)
    }
}

impl Nic for TapNic {
    type Rx = PoolFrame;

    fn rx_burst(&mut self, out: &mut Vec<PoolFrame>, max: usize) -> usize {
        let max_frame = self.mtu + ETH_HLEN + VLAN_TAG_LEN;
        let mut got = 0;
        while got < max {
            // An empty pool means the stack holds every buffer: leave frames in the kernel
            // queue (nothing is dropped here) until some come back.
            let Some(mut frame) = self.pool.take() else {
                break;
            };
            let buf = frame.whole_mut();
            let mut vnet = [0u8; VNET_HDR_LEN];
            let iov = [
                libc::iovec { iov_base: vnet.as_mut_ptr() as *mut libc::c_void, iov_len: VNET_HDR_LEN },
                libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() },
            ];
            // SAFETY: both iovecs point at writable buffers (the header array and the pool
            // buffer) that we own for the call.
            let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => {}
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        self.counters.rx_errors += 1;
                        log::warn!("tap {}: read: {err}", self.ifname);
                    }
                }
                break;
            }
            // What follows the virtio-net header, which says whether the TCP checksum needs
            // checking (no GSO: receive segmentation offload is off).
            let n = (n as usize).saturating_sub(VNET_HDR_LEN);
            if n < ETH_HLEN || n > max_frame || n > buf.len() {
                // Truncated or runt frame; the buffer goes back to the pool.
                self.counters.rx_errors += 1;
                log::debug!(
                    "tap {}: dropped a {n}-byte frame (limits {ETH_HLEN}..={max_frame})",
                    self.ifname
                );
                continue;
            }
            frame.set_len(n);
            if self.rx_verdicts {
                frame.set_rx_checksums(rx_checksums_of(&vnet));
            }
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += n as u64;
            out.push(frame);
            got += 1;
        }
        got
    }

    fn tx_gather(&mut self, parts: &[&[u8]]) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !(ETH_HLEN..=self.mtu + ETH_HLEN).contains(&total) {
            self.counters.tx_errors += 1;
            log::debug!(
                "tap {}: dropped a {total}-byte frame (mtu {})",
                self.ifname,
                self.mtu
            );
            return true; // never sendable: dropped, not retried
        }
        self.send(&[0; VNET_HDR_LEN], parts, total)
    }

    /// The kernel checksums the frame and, when its payload is longer than `tcp.mss`, cuts
    /// it into segments (GSO), or hands it to the receiving socket whole.
    fn tx_tcp(&mut self, parts: &[&[u8]], tcp: TcpTx) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let hdr_len = tcp.l4_offset + tcp.l4_len;
        let payload = total.saturating_sub(hdr_len);
        let Some(&hdr) = parts.first() else { return true };
        // Each segment the kernel cuts must fit the MTU, as must a frame it does not cut.
        let largest = if payload > tcp.mss { hdr_len + tcp.mss } else { total };
        if hdr.len() != hdr_len || hdr_len < 54 || payload > MAX_TSO_PAYLOAD || tcp.mss == 0 || largest > self.mtu + ETH_HLEN {
            self.counters.tx_errors += 1;
            log::debug!("tap {}: dropped a TCP frame of {total} bytes ({tcp:?})", self.ifname);
            return true; // never sendable: dropped, not retried
        }
        // The TCP checksum field holds the pseudo-header sum (not complemented), as Linux's
        // own stack leaves it for CHECKSUM_PARTIAL; the kernel adds the segment to it.
        let mut first = [0u8; 14 + 60 + 60];
        first[..hdr_len].copy_from_slice(hdr);
        let src: [u8; 4] = first[26..30].try_into().expect("4 bytes");
        let dst: [u8; 4] = first[30..34].try_into().expect("4 bytes");
        let seg_len = (total - tcp.l4_offset) as u16;
        let pseudo = !checksum::finish(checksum::pseudo_header(src, dst, 6, seg_len));
        first[tcp.l4_offset + 16..tcp.l4_offset + 18].copy_from_slice(&pseudo.to_be_bytes());
        let gso = if payload > tcp.mss { VNET_HDR_GSO_TCPV4 } else { VNET_HDR_GSO_NONE };
        let vnet = vnet_header(VNET_HDR_F_NEEDS_CSUM, gso, hdr_len as u16, tcp.mss as u16, tcp.l4_offset as u16, TCP_CSUM_OFFSET);
        let mut list: [&[u8]; MAX_IOVECS] = [&[]; MAX_IOVECS];
        if parts.len() > MAX_IOVECS {
            self.counters.tx_errors += 1;
            return true; // never sendable: dropped, not retried
        }
        list[0] = &first[..hdr_len];
        list[1..parts.len()].copy_from_slice(&parts[1..]);
        self.send(&vnet, &list[..parts.len()], total)
    }

    fn tx_flush(&mut self) -> usize {
        std::mem::take(&mut self.tx_since_flush)
    }

    /// Off, the kernel fills in every checksum (no `TUN_F_CSUM`) and the stack verifies them;
    /// should the kernel refuse the change, verdicts stay on (frames with unfilled checksums
    /// would otherwise all be refused).
    fn set_rx_checksum_offload(&mut self, on: bool) {
        match set_offload(&self.fd, if on { TUN_F_CSUM } else { 0 }) {
            Ok(()) => self.rx_verdicts = on,
            Err(e) => log::warn!("tap {}: TUNSETOFFLOAD: {e}; receive checksum offload stays {}", self.ifname, if self.rx_verdicts { "on" } else { "off" }),
        }
    }

    fn wait_rx(&mut self, timeout: Duration) {
        let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd that lives across the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                log::warn!("tap {}: poll: {err}", self.ifname);
            }
        }
    }

    fn link(&self) -> LinkInfo {
        LinkInfo {
            mac: self.mac,
            mtu: self.mtu,
            up: true,
            driver: "tap".to_owned(),
            offloads: TxOffloads { tcp_checksum: true, tso_max_payload: MAX_TSO_PAYLOAD },
        }
    }

    fn counters(&self) -> NicCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nic::FrameBuf;
    use std::time::Instant;

    #[test]
    fn vnet_header_checksum_flags_become_verdicts() {
        let good = RxChecksums { ipv4: RxVerdict::Unchecked, l4: RxVerdict::Good };
        // The kernel's own TCP segment, checksum left to offload.
        assert_eq!(rx_checksums_of(&vnet_header(VNET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16)), good);
        assert_eq!(rx_checksums_of(&vnet_header(VNET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0)), good);
        // A partial UDP checksum says nothing of TCP; no flag: the stack checks.
        assert_eq!(rx_checksums_of(&vnet_header(VNET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6)), RxChecksums::UNCHECKED);
        assert_eq!(rx_checksums_of(&[0; VNET_HDR_LEN]), RxChecksums::UNCHECKED);
    }

    #[test]
    fn mac_is_stable_local_unicast() {
        let a = mac_for_ifname("tap0");
        assert_eq!(a, mac_for_ifname("tap0"));
        assert_ne!(a, mac_for_ifname("tap1"));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered, unicast");
    }

    #[test]
    fn bad_interface_names_are_refused() {
        for name in ["", "a/b", "sixteen-chars-xx", "a b", "tap%d", "a:1"] {
            assert!(
                matches!(TapNic::open(name), Err(NicError::Config(_))),
                "{name:?}"
            );
        }
    }

    /// Why the namespace test cannot run here, if it cannot.
    fn cannot_run() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root".into());
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Some("no /dev/net/tun".into());
        }
        None
    }

    fn set_ipv4(ifname: &str, request: libc::c_ulong, addr: [u8; 4]) -> io::Result<()> {
        let sock = control_socket()?;
        let mut data = [0u8; 14];
        data[2..6].copy_from_slice(&addr);
        let mut ifr = IfReqAddr {
            name: ifname_field(ifname).unwrap(),
            family: libc::AF_INET as libc::sa_family_t,
            data,
            _pad: [0; 8],
        };
        ifreq_ioctl(&sock, request, &mut ifr)
    }

    /// Creates a TAP that outlives its file descriptor (as `ip tuntap add` does).
    fn make_persistent_tap(ifname: &str) -> io::Result<()> {
        let path = CString::new("/dev/net/tun").unwrap();
        // SAFETY: path is a valid NUL-terminated string.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a file descriptor we just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReqFlags {
            name: ifname_field(ifname).unwrap(),
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        ifreq_ioctl(&fd, libc::TUNSETIFF as _, &mut req)?;
        // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST as _, 1 as libc::c_ulong) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn ip_checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in data.chunks(2) {
            let word = if chunk.len() == 2 {
                u16::from_be_bytes([chunk[0], chunk[1]])
            } else {
                u16::from(chunk[0]) << 8
            };
            sum += u32::from(word);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Receives until `matches` accepts a frame or 3 s pass.
    fn receive_matching(
        nic: &mut TapNic,
        mut matches: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut out = Vec::with_capacity(32);
        while Instant::now() < deadline {
            nic.wait_rx(Duration::from_millis(100));
            nic.rx_burst(&mut out, 32);
            if let Some(frame) = out.drain(..).find(|f| matches(f.bytes())) {
                return Some(frame.bytes().to_vec());
            }
        }
        None
    }

    /// Runs in a fresh network namespace on its own thread: the kernel answers our ARP request
    /// and our ICMP echo request through the TAP.
    fn arp_and_ping_in_namespace() -> Result<(), String> {
        // SAFETY: unshare only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            ));
        }
        // A fresh name: open creates the TAP.
        let created = TapNic::open("aptest1").map_err(|e| e.to_string())?;
        assert_eq!(created.link().mtu, 1500);
        drop(created);

        // An operator's persistent TAP: open attaches to it.
        let ifname = "aptest0";
        make_persistent_tap(ifname).map_err(|e| format!("persistent tap: {e}"))?;
        let mut nic = TapNic::open(ifname).map_err(|e| e.to_string())?;
        let kernel_ip = [10, 77, 0, 1];
        let our_ip = [10, 77, 0, 2];
        set_ipv4(ifname, libc::SIOCSIFADDR as _, kernel_ip)
            .map_err(|e| format!("SIOCSIFADDR: {e}"))?;
        set_ipv4(ifname, libc::SIOCSIFNETMASK as _, [255, 255, 255, 0])
            .map_err(|e| format!("SIOCSIFNETMASK: {e}"))?;
        // The kernel lets one queue attach to a (non-multiqueue) TAP: a second open is a clear
        // error, not a hang or a panic.
        match TapNic::open(ifname) {
            Err(NicError::Open { what, .. }) => assert!(what.contains("TUNSETIFF"), "{what}"),
            other => return Err(format!("second open of {ifname}: {other:?}")),
        }
        // A multi-queue TAP: one queue per open_queue(true); single-queue attaches are refused
        // as a mode mismatch, and open() falls back to taking one of its queues.
        let q0 = TapNic::open_queue("aptestmq", true).map_err(|e| format!("queue 0: {e}"))?;
        let q1 = TapNic::open_queue("aptestmq", true).map_err(|e| format!("queue 1: {e}"))?;
        // sysfs is the namespace's only if mounted in it: check the probe where it applies.
        if std::fs::read_to_string("/sys/class/net/aptestmq/tun_flags").is_ok() {
            assert_eq!(existing_multi_queue("aptestmq"), Some(true));
        }
        match TapNic::open_queue("aptestmq", false) {
            Err(e) => assert!(is_queue_mode_mismatch(&e), "{e}"),
            Ok(_) => return Err("single-queue attach to a multi-queue TAP succeeded".into()),
        }
        let q2 = TapNic::open("aptestmq").map_err(|e| format!("open() of a multi-queue TAP: {e}"))?;
        assert_eq!(q1.link().mac, q0.link().mac, "every queue is one port");
        drop((q0, q1, q2));
        match TapNic::open_queue(ifname, true) {
            Err(e) => assert!(is_queue_mode_mismatch(&e), "{e}"),
            Ok(_) => return Err("multi-queue attach to a single-queue TAP succeeded".into()),
        }

        let link = nic.link();
        assert_eq!(link.driver, "tap");
        assert_eq!(link.mtu, 1500);
        let mac = link.mac;

        // ARP who-has 10.77.0.1 tell 10.77.0.2, sent as header + body to exercise the gather.
        let mut eth = [0u8; 14];
        eth[..6].copy_from_slice(&[0xff; 6]);
        eth[6..12].copy_from_slice(&mac);
        eth[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut arp = [0u8; 28];
        arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp[8..14].copy_from_slice(&mac);
        arp[14..18].copy_from_slice(&our_ip);
        arp[24..28].copy_from_slice(&kernel_ip);
        assert!(
            nic.tx_gather(&[&eth, &arp[..10], &arp[10..]]),
            "tx of ARP request failed: {:?}",
            nic.counters()
        );
        assert_eq!(nic.tx_flush(), 1);

        let reply = receive_matching(&mut nic, |f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
        })
        .ok_or("no ARP reply from the kernel within 3 s")?;
        assert_eq!(&reply[0..6], &mac, "reply addressed to us");
        assert_eq!(&reply[28..32], &kernel_ip, "sender IP");
        assert_eq!(&reply[32..38], &mac, "target MAC");
        let kernel_mac: [u8; 6] = reply[22..28].try_into().unwrap();
        assert_ne!(
            kernel_mac, mac,
            "the appliance MAC must differ from the kernel's"
        );

        // ICMP echo to the kernel; it learned our MAC from the ARP request.
        let payload = b"tap-nic echo test";
        let mut ip = [0u8; 20];
        let icmp_len = 8 + payload.len();
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + icmp_len) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&our_ip);
        ip[16..20].copy_from_slice(&kernel_ip);
        let c = ip_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut icmp = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
        icmp.extend_from_slice(payload);
        let c = ip_checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut eth = [0u8; 14];
        eth[..6].copy_from_slice(&kernel_mac);
        eth[6..12].copy_from_slice(&mac);
        eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert!(nic.tx_gather(&[&eth, &ip, &icmp]));
        assert_eq!(nic.tx_flush(), 1);
        let reply = receive_matching(&mut nic, |f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0
        })
        .ok_or("no ICMP echo reply from the kernel within 3 s")?;
        assert_eq!(&reply[26..30], &kernel_ip);
        assert_eq!(&reply[30..34], &our_ip);
        assert_eq!(&reply[38..42], &[0x12, 0x34, 0, 1], "echo id and sequence");
        assert_eq!(&reply[42..42 + payload.len()], payload);

        // Oversized frames are dropped and counted, not written (nor refused: a refusal
        // means "full, send it again").
        let before = nic.counters();
        let big = vec![0u8; 1500 + 15];
        assert!(nic.tx_gather(&[&big]));
        let after = nic.counters();
        assert_eq!(after.tx_errors, before.tx_errors + 1);
        assert_eq!(after.tx_packets, before.tx_packets);

        let c = nic.counters();
        assert_eq!(c.tx_packets, 2);
        assert!(c.rx_packets >= 2, "{c:?}");
        assert!(c.rx_bytes >= 42 * 2);
        // Every received frame went back to the pool.
        assert_eq!(nic.rx_buffers_free(), TAP_RX_BUFFERS);
        Ok(())
    }

    #[test]
    fn kernel_answers_arp_and_ping_through_tap_in_namespace() {
        if let Some(reason) = cannot_run() {
            eprintln!("SKIPPED kernel_answers_arp_and_ping_through_tap_in_namespace: {reason}");
            return;
        }
        let result = std::thread::spawn(arp_and_ping_in_namespace)
            .join()
            .expect("namespace thread panicked");
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
