//! AF_PACKET backend: drives an existing kernel network interface (the image's virtio-net
//! port until the DPDK backend lands) through one raw packet socket.
//!
//! Received frames are copied by the kernel into buffers of a pool sized at open; a
//! [`PacketFrame`] owns one until dropped, when it returns to the pool. Transmit copies the
//! gather list into one of a fixed set of slots and [`Nic::tx_flush`] sends the queued slots.
//! Nothing allocates per packet. The socket is non-blocking; [`Nic::wait_rx`] uses poll(2).
use super::{FrameBuf, LinkInfo, Nic, NicCounters, NicError, TxOffloads};
use std::cell::RefCell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

/// Largest frame we receive or send (Ethernet header + 1500 + VLAN tag, rounded up).
const FRAME_SIZE: usize = 2048;
const RX_POOL: usize = 512;
const TX_SLOTS: usize = 256;
const ETH_HEADER: usize = 14;
const MTU: usize = 1500;
/// Receive buffer asked of the kernel (SO_RCVBUFFORCE, else SO_RCVBUF up to rmem_max). The
/// default (about 208 KiB, counted in skb truesize) overflowed when 100 clients connected at
/// once to a guest under emulation: the kernel dropped their ACKs and requests, and QEMU's
/// user network did not resend them before the header timeout closed the connections.
const RCVBUF: libc::c_int = 8 << 20;

type Buffer = Box<[u8; FRAME_SIZE]>;

/// A received frame; its buffer goes back to the pool on drop.
pub struct PacketFrame {
    buf: Option<Buffer>,
    len: usize,
    pool: Rc<RefCell<Vec<Buffer>>>,
}

impl FrameBuf for PacketFrame {
    fn bytes(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[..self.len],
            None => &[],
        }
    }
}

impl Drop for PacketFrame {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            // The pool vector has capacity for every buffer, so this never allocates.
            self.pool.borrow_mut().push(b);
        }
    }
}

/// One kernel interface driven through an AF_PACKET socket.
pub struct PacketNic {
    fd: OwnedFd,
    ifname: String,
    mac: [u8; 6],
    pool: Rc<RefCell<Vec<Buffer>>>,
    tx: Vec<Buffer>,
    tx_len: [usize; TX_SLOTS],
    /// Queued frames are tx[tx_head .. tx_head + tx_count] (mod TX_SLOTS).
    tx_head: usize,
    tx_count: usize,
    counters: NicCounters,
    /// Frames the kernel dropped because the socket's receive queue was full
    /// (PACKET_STATISTICS, which resets on each read, so they are added up here).
    kernel_drops: std::cell::Cell<u64>,
}

fn os_err(what: &str) -> NicError {
    NicError::Open { what: what.to_string(), source: io::Error::last_os_error() }
}

/// An AF_INET datagram socket for the interface ioctls.
fn ioctl_socket() -> Result<OwnedFd, NicError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("ioctl socket"));
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_for(ifname: &str) -> Result<libc::ifreq, NicError> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(NicError::Config(format!("bad interface name {ifname:?}")));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

impl PacketNic {
    /// Opens `ifname`: brings it up, binds a raw socket to it in promiscuous mode (so a
    /// configured MAC other than the port's own still receives), non-blocking.
    pub fn open(ifname: &str) -> Result<PacketNic, NicError> {
        Self::open_in_group(ifname, None)
    }

    /// Like [`PacketNic::open`], as one member of the fanout group `group` (one socket per
    /// core): the kernel hands each received frame to one member, chosen by a hash of its
    /// flow, so every frame of a connection reaches the same core.
    pub fn open_in_group(ifname: &str, group: Option<u16>) -> Result<PacketNic, NicError> {
        let ctl = ioctl_socket()?;
        let mut req = ifreq_for(ifname)?;
        // SAFETY: req is a valid ifreq naming the interface; SIOCGIFFLAGS fills ifru_flags.
        if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(os_err(&format!("interface {ifname}")));
        }
        // SAFETY: the kernel just wrote the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        if flags & libc::IFF_UP as libc::c_short == 0 {
            req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
            // SAFETY: as above; SIOCSIFFLAGS reads ifru_flags.
            if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
                return Err(os_err(&format!("bringing {ifname} up")));
            }
        }
        let mut req = ifreq_for(ifname)?;
        // SAFETY: SIOCGIFHWADDR fills ifru_hwaddr of the valid ifreq.
        if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
            return Err(os_err(&format!("MAC address of {ifname}")));
        }
        // SAFETY: the kernel just wrote the hwaddr member of the union.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *d = *s as u8;
        }

        let name = CString::new(ifname).map_err(|_| NicError::Config(format!("bad interface name {ifname:?}")))?;
        // SAFETY: name is NUL-terminated.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(os_err(&format!("index of {ifname}")));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto as i32)
        };
        if raw < 0 {
            return Err(os_err("AF_PACKET socket (needs CAP_NET_RAW)"));
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid before we fill it.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(os_err(&format!("binding to {ifname}")));
        }
        // SAFETY: packet_mreq is plain old data.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = index as i32;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        set_option(&fd, libc::PACKET_ADD_MEMBERSHIP, &mreq).map_err(|e| NicError::Open { what: "promiscuous mode".into(), source: e })?;
        let rcvbuf_ok = set_socket_option(&fd, libc::SO_RCVBUFFORCE, &RCVBUF)
            .or_else(|_| set_socket_option(&fd, libc::SO_RCVBUF, &RCVBUF));
        if let Err(e) = rcvbuf_ok {
            log::warn!("af_packet {ifname}: receive buffer of {RCVBUF} bytes refused: {e}");
        }
        // Frames the kernel itself sends on the port are not ours to see (Linux >= 4.20).
        let one: libc::c_int = 1;
        if let Err(e) = set_option(&fd, libc::PACKET_IGNORE_OUTGOING, &one) {
            log::debug!("PACKET_IGNORE_OUTGOING unavailable on {ifname}: {e}");
        }
        if let Some(group) = group {
            let arg = libc::c_int::from(group) | ((libc::PACKET_FANOUT_HASH as libc::c_int) << 16);
            set_option(&fd, libc::PACKET_FANOUT, &arg)
                .map_err(|e| NicError::Open { what: format!("fanout group {group} on {ifname}"), source: e })?;
        }

        let mut pool = Vec::with_capacity(RX_POOL);
        pool.extend((0..RX_POOL).map(|_| Box::new([0u8; FRAME_SIZE])));
        let tx = (0..TX_SLOTS).map(|_| Box::new([0u8; FRAME_SIZE])).collect();
        log::info!("af_packet: {ifname} (index {index}) mac {}", fmt_mac(&mac));
        Ok(PacketNic {
            fd,
            ifname: ifname.to_string(),
            mac,
            pool: Rc::new(RefCell::new(pool)),
            tx,
            tx_len: [0; TX_SLOTS],
            tx_head: 0,
            tx_count: 0,
            counters: NicCounters::default(),
            kernel_drops: std::cell::Cell::new(0),
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Frames waiting in the transmit queue.
    pub fn tx_queued(&self) -> usize {
        self.tx_count
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

fn set_option<T>(fd: &OwnedFd, name: libc::c_int, value: &T) -> io::Result<()> {
    set_level_option(fd, libc::SOL_PACKET, name, value)
}

fn set_socket_option<T>(fd: &OwnedFd, name: libc::c_int, value: &T) -> io::Result<()> {
    set_level_option(fd, libc::SOL_SOCKET, name, value)
}

/// Frames dropped by the kernel since the last call (PACKET_STATISTICS resets them).
fn take_kernel_drops(fd: &OwnedFd) -> u64 {
    // SAFETY: tpacket_stats is plain old data.
    let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: st is a live tpacket_stats and len its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        0
    } else {
        u64::from(st.tp_drops)
    }
}

fn set_level_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points at a live T and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Nic for PacketNic {
    type Rx = PacketFrame;

    fn rx_burst(&mut self, out: &mut Vec<PacketFrame>, max: usize) -> usize {
        let mut got = 0;
        while got < max {
            let Some(mut buf) = self.pool.borrow_mut().pop() else {
                break; // every buffer is held by the caller; the socket keeps the rest
            };
            // SAFETY: sockaddr_ll is plain old data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf is FRAME_SIZE writable bytes; from/from_len describe a valid address.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    FRAME_SIZE,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                self.pool.borrow_mut().push(buf);
                match err.kind() {
                    io::ErrorKind::WouldBlock => {}
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        self.counters.rx_errors += 1;
                        log::debug!("af_packet {}: receive: {err}", self.ifname);
                    }
                }
                break;
            }
            let n = n as usize;
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                self.pool.borrow_mut().push(buf);
                continue;
            }
            if !(ETH_HEADER..=FRAME_SIZE).contains(&n) {
                self.counters.rx_dropped += 1;
                self.pool.borrow_mut().push(buf);
                continue;
            }
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += n as u64;
            out.push(PacketFrame { buf: Some(buf), len: n, pool: Rc::clone(&self.pool) });
            got += 1;
        }
        got
    }

    fn tx_gather(&mut self, parts: &[&[u8]]) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !(ETH_HEADER..=MTU + ETH_HEADER).contains(&total) {
            self.counters.tx_dropped += 1;
            return true; // never sendable: dropped, not retried
        }
        if self.tx_count == TX_SLOTS {
            return false;
        }
        let slot = (self.tx_head + self.tx_count) % TX_SLOTS;
        let mut at = 0;
        for p in parts {
            self.tx[slot][at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.tx_len[slot] = total;
        self.tx_count += 1;
        true
    }

    fn tx_flush(&mut self) -> usize {
        let mut sent = 0;
        while self.tx_count > 0 {
            let slot = self.tx_head;
            let len = self.tx_len[slot];
            // SAFETY: the slot holds len initialised bytes; the socket is bound to the port.
            let n = unsafe { libc::send(self.fd.as_raw_fd(), self.tx[slot].as_ptr().cast(), len, libc::MSG_DONTWAIT) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => break, // kernel queue full: keep the rest queued
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        self.counters.tx_errors += 1;
                        log::debug!("af_packet {}: send: {err}", self.ifname);
                    }
                }
            } else {
                self.counters.tx_packets += 1;
                self.counters.tx_bytes += len as u64;
                sent += 1;
            }
            self.tx_head = (self.tx_head + 1) % TX_SLOTS;
            self.tx_count -= 1;
        }
        sent
    }

    fn wait_rx(&mut self, timeout: Duration) {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    fn link(&self) -> LinkInfo {
        let up = ifreq_for(&self.ifname)
            .ok()
            .and_then(|mut req| {
                let ctl = ioctl_socket().ok()?;
                // SAFETY: valid ifreq; SIOCGIFFLAGS fills ifru_flags.
                let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
                if rc != 0 {
                    return None;
                }
                // SAFETY: on success the kernel wrote the flags member.
                let flags = unsafe { req.ifr_ifru.ifru_flags };
                Some(flags & libc::IFF_RUNNING as libc::c_short != 0)
            })
            .unwrap_or(false);
        LinkInfo { mac: self.mac, mtu: MTU, up, driver: "af_packet".to_string(), offloads: TxOffloads::default() }
    }

    fn counters(&self) -> NicCounters {
        self.kernel_drops.set(self.kernel_drops.get() + take_kernel_drops(&self.fd));
        let mut c = self.counters;
        c.rx_dropped += self.kernel_drops.get();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn can_open_lo() -> Option<PacketNic> {
        match PacketNic::open("lo") {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("skipping: cannot open lo with AF_PACKET ({e})");
                None
            }
        }
    }

    #[test]
    fn bad_interface_names_are_errors() {
        assert!(matches!(PacketNic::open(""), Err(NicError::Config(_))));
        assert!(matches!(PacketNic::open("a-name-far-too-long"), Err(NicError::Config(_))));
        assert!(matches!(PacketNic::open("nosuchif9"), Err(NicError::Open { .. })));
    }

    /// Loopback delivers every frame sent on it back to packet sockets bound to it, so one
    /// socket sees its own frames as PACKET_OUTGOING (skipped) and as incoming (kept).
    #[test]
    fn frames_sent_on_loopback_come_back_and_buffers_recycle() {
        let Some(mut nic) = can_open_lo() else { return };
        assert_eq!(nic.link().driver, "af_packet");
        let mut rx = Vec::with_capacity(64);
        while nic.rx_burst(&mut rx, 64) > 0 {
            rx.clear();
        }
        let dst = [0u8; 6];
        let src = [2, 0, 0, 0, 0, 1];
        let ethertype = 0x88b5u16.to_be_bytes(); // local experimental
        let payload = b"af_packet test frame 0123456789";
        for i in 0..5u8 {
            assert!(nic.tx_gather(&[&dst, &src, &ethertype, &[i], payload]));
        }
        assert_eq!(nic.tx_queued(), 5);
        assert_eq!(nic.tx_flush(), 5);
        let mut seen = Vec::new();
        for _ in 0..50 {
            nic.wait_rx(Duration::from_millis(20));
            nic.rx_burst(&mut rx, 64);
            for f in rx.drain(..) {
                let b = f.bytes();
                if b.len() == 15 + payload.len() && b[12..14] == ethertype && &b[15..] == payload {
                    seen.push(b[14]);
                }
            }
            if seen.len() >= 5 {
                break;
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(nic.pool.borrow().len(), RX_POOL, "every buffer came back");
        let c = nic.counters();
        assert_eq!(c.tx_packets, 5);
        assert!(c.rx_packets >= 5);
    }

    #[test]
    fn oversized_and_runt_frames_are_dropped_and_full_ring_refuses() {
        let Some(mut nic) = can_open_lo() else { return };
        let big = [0u8; MTU + ETH_HEADER + 1];
        assert!(nic.tx_gather(&[&big]));
        assert!(nic.tx_gather(&[&[0u8; 4]]));
        assert_eq!(nic.counters().tx_dropped, 2);
        assert_eq!(nic.tx_queued(), 0);
        let frame = [0u8; 60];
        for _ in 0..TX_SLOTS {
            assert!(nic.tx_gather(&[&frame]));
        }
        assert!(!nic.tx_gather(&[&frame]), "ring full");
    }
}
