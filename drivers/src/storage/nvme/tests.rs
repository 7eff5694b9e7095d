//! The driver against the in-memory controller model.
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::model::{pattern, FakeDma, Model, ModelConfig};
use super::*;

struct Rig {
    dma: FakeDma,
    model: Arc<Model>,
}

fn rig(config: ModelConfig) -> Rig {
    let dma = FakeDma::new();
    let model = Model::new(dma.clone(), config);
    Rig { dma, model }
}

impl Rig {
    fn controller(&self, config: &NvmeConfig) -> Result<NvmeController, StorageError> {
        NvmeController::new(self.model.clone(), Arc::new(self.dma.clone()), config, "model")
    }

    fn queue(&self, config: &NvmeConfig) -> NvmeStorage {
        self.controller(config).unwrap().into_queues().unwrap().remove(0).into_storage()
    }

    fn assert_no_protocol_errors(&self) {
        let errors = self.model.stats().protocol_errors;
        assert!(errors.is_empty(), "driver broke the protocol: {errors:?}");
    }
}

fn config(depth: usize) -> NvmeConfig {
    NvmeConfig { queue_depth: depth, command_timeout: Duration::from_millis(60), ..NvmeConfig::default() }
}

/// Poll until `n` completions arrived (bounded: the model answers at once or never).
fn poll_for(q: &mut NvmeStorage, n: usize, limit: Duration) -> Vec<Completion> {
    let mut out = Vec::with_capacity(64);
    let start = Instant::now();
    while out.len() < n && start.elapsed() < limit {
        q.poll(&mut out);
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

fn check_bytes(buf: &DmaBuf, offset: u64, len: usize) {
    for (i, b) in buf.as_slice()[..len].iter().enumerate() {
        assert_eq!(*b, pattern(offset + i as u64), "byte {i} of read at {offset}");
    }
}

#[test]
fn nvme_controller_comes_up_and_identifies() {
    let r = rig(ModelConfig::default());
    let ctrl = r.controller(&config(8)).unwrap();
    let info = ctrl.info();
    assert_eq!(info.model, "nvme-model");
    assert_eq!(info.serial, "MODEL0001");
    assert_eq!(info.firmware, "1.0");
    assert_eq!(info.version, "1.4.0");
    assert_eq!(info.vendor_id, 0x1b36);
    assert_eq!(info.namespaces, vec![1, 2]);
    assert_eq!(info.page_size, 4096);
    assert_eq!(info.max_transfer, 2 << 20, "no MDTS: the PRP list page is the limit");
    assert_eq!(ctrl.namespace(), NamespaceInfo { nsid: 1, lba_size: 512, blocks: 1 << 20 });
    let stats = r.model.stats();
    assert_eq!(stats.enables, 1);
    assert_eq!(r.model.cc() & 1, 1);
    let queues: Vec<NvmeStorage> = ctrl.into_queues().unwrap().into_iter().map(NvmeQueue::into_storage).collect();
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0].backend(), "nvme-vfio");
    assert_eq!(queues[0].block_size(), 4096);
    assert_eq!(queues[0].capacity(), (1 << 20) * 512);
    assert_eq!(r.model.stats().io_queues_created, 1);
    r.assert_no_protocol_errors();
}

#[test]
fn nvme_reads_land_in_dma_buffers_across_page_boundaries() {
    let r = rig(ModelConfig::default());
    let mut q = r.queue(&config(8));
    let pool = q.dma_pool(256 * 1024, 4).unwrap();
    // One page (PRP1), two pages (PRP2 as pointer), many pages (PRP list), unaligned offsets.
    for (i, (offset, len)) in [(0u64, 4096usize), (4096 * 7, 8192), (1 << 20, 3 * 4096), (4096 * 3, 256 * 1024)]
        .into_iter()
        .enumerate()
    {
        q.submit_read(i as u64, offset, len, pool.alloc().unwrap()).unwrap();
        let done = poll_for(&mut q, 1, Duration::from_secs(1));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].tag, i as u64);
        assert_eq!(done[0].result, Ok(()));
        check_bytes(&done[0].buf, offset, len);
    }
    assert_eq!(r.model.stats().prp_list_reads, 2);
    let c = q.counters();
    assert_eq!((c.reads, c.read_bytes, c.errors), (4, 4096 + 8192 + 3 * 4096 + 256 * 1024, 0));
    r.assert_no_protocol_errors();
}

#[test]
fn nvme_queue_wraps_many_times_with_doorbell_stride() {
    let r = rig(ModelConfig { dstrd: 2, mqes: 3, ..ModelConfig::default() });
    let mut q = r.queue(&config(64));
    // MQES 3 means 4 entries: depth is clamped to 3.
    let pool = q.dma_pool(4096, 8).unwrap();
    let mut expected = std::collections::HashMap::new();
    let mut done = Vec::with_capacity(8);
    let mut next = 0u64;
    while next < 200 || q.in_flight() > 0 {
        while next < 200 {
            let Some(buf) = pool.alloc() else { break };
            let offset = (next * 7919 % 1000) * 4096;
            match q.submit_read(next, offset, 4096, buf) {
                Ok(()) => {
                    expected.insert(next, offset);
                    next += 1;
                }
                Err((StorageError::QueueFull, _)) => break,
                Err((e, _)) => panic!("{e}"),
            }
        }
        assert!(q.in_flight() <= 3);
        q.poll(&mut done);
        for c in done.drain(..) {
            assert_eq!(c.result, Ok(()));
            check_bytes(&c.buf, expected.remove(&c.tag).unwrap(), 4096);
        }
    }
    assert!(expected.is_empty());
    assert!(r.model.stats().phase_flips >= 40, "{:?}", r.model.stats());
    assert_eq!(q.counters().reads, 200);
    r.assert_no_protocol_errors();
}

#[test]
fn nvme_out_of_order_completions_match_their_reads() {
    let r = rig(ModelConfig::default());
    let mut q = r.queue(&config(4));
    let pool = q.dma_pool(8192, 4).unwrap();
    r.model.hold(true);
    for tag in 0..4u64 {
        q.submit_read(tag, tag * 8192 * 10, 8192, pool.alloc().unwrap()).unwrap();
    }
    let buf = DmaPool::heap(4096, 1, 4096).alloc().unwrap();
    let (err, _buf) = q.submit_read(9, 0, 4096, buf).unwrap_err();
    assert_eq!(err, StorageError::QueueFull);
    assert_eq!(q.in_flight(), 4);
    r.model.flush();
    let done = poll_for(&mut q, 4, Duration::from_secs(1));
    assert_eq!(done.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![3, 2, 1, 0]);
    for c in &done {
        assert_eq!(c.result, Ok(()));
        check_bytes(&c.buf, c.tag * 8192 * 10, 8192);
    }
    assert_eq!(q.in_flight(), 0);
    r.assert_no_protocol_errors();
}

#[test]
fn nvme_media_errors_end_one_read_and_are_counted() {
    let r = rig(ModelConfig::default());
    let mut q = r.queue(&config(4));
    let pool = q.dma_pool(4096, 2).unwrap();
    r.model.fail_lba(8 * 5 + 3); // inside the 4 KiB block at offset 5 * 4096
    q.submit_read(1, 5 * 4096, 4096, pool.alloc().unwrap()).unwrap();
    let done = poll_for(&mut q, 1, Duration::from_secs(1));
    match &done[0].result {
        Err(StorageError::Device(text)) => assert!(text.contains("unrecovered read error"), "{text}"),
        other => panic!("{other:?}"),
    }
    drop(done);
    q.submit_read(2, 6 * 4096, 4096, pool.alloc().unwrap()).unwrap();
    let done = poll_for(&mut q, 1, Duration::from_secs(1));
    assert_eq!(done[0].result, Ok(()));
    assert_eq!(q.counters().errors, 1);
    assert_eq!(q.counters().reads, 1);
}

#[test]
fn nvme_bad_requests_are_refused_before_the_device() {
    let r = rig(ModelConfig { mdts: 3, blocks: 64, ..ModelConfig::default() });
    let mut q = r.queue(&config(4));
    assert_eq!(q.max_transfer(), 32 * 1024);
    let pool = q.dma_pool(64 * 1024, 1).unwrap();
    type Case = (u64, usize, fn(&StorageError) -> bool);
    let cases: [Case; 5] = [
        (100, 4096, |e| matches!(e, StorageError::Unaligned { .. })),
        (0, 100, |e| matches!(e, StorageError::Unaligned { .. })),
        (0, 0, |e| matches!(e, StorageError::Unaligned { .. })),
        (28 * 1024, 8192, |e| matches!(e, StorageError::OutOfRange { capacity: 32768, .. })),
        (0, 64 * 1024, |e| matches!(e, StorageError::OutOfRange { .. })),
    ];
    let mut buf = pool.alloc().unwrap();
    for (offset, len, ok) in cases {
        let (e, b) = q.submit_read(0, offset, len, buf).unwrap_err();
        assert!(ok(&e), "{offset} {len}: {e}");
        buf = b;
    }
    // A buffer smaller than the read.
    let small = DmaPool::heap(4096, 1, 4096).alloc().unwrap();
    let (e, _) = q.submit_read(0, 0, 8192, small).unwrap_err();
    assert!(matches!(e, StorageError::Device(ref t) if t.contains("does not fit")), "{e}");
    assert_eq!(q.counters().errors, 6);
    assert_eq!(r.model.stats().reads, 0);
    q.submit_read(0, 0, 32 * 1024, buf).unwrap();
    assert_eq!(poll_for(&mut q, 1, Duration::from_secs(1))[0].result, Ok(()));
}

#[test]
fn nvme_reads_above_mdts_are_split_into_several_commands() {
    // MDTS 1: 8 KiB per command; the model fails any command longer than that.
    let r = rig(ModelConfig { mdts: 1, ..ModelConfig::default() });
    let mut q = r.queue(&config(4));
    assert_eq!((q.max_transfer(), q.max_read()), (8192, 32768));
    let pool = q.dma_pool(40960, 3).unwrap();
    for (tag, offset, len) in [(1u64, 0u64, 16384usize), (2, 4096 * 33, 32768), (3, 4096 * 5, 12288)] {
        q.submit_read(tag, offset, len, pool.alloc().unwrap()).unwrap();
        let done = poll_for(&mut q, 1, Duration::from_secs(1));
        assert_eq!(done[0].result, Ok(()), "read of {len}");
        check_bytes(&done[0].buf, offset, len);
    }
    assert_eq!(r.model.stats().reads, 2 + 4 + 2);
    // Longer than every command slot together: refused.
    let (e, buf) = q.submit_read(4, 0, 36864, pool.alloc().unwrap()).unwrap_err();
    assert!(matches!(e, StorageError::Device(ref t) if t.contains("32768")), "{e}");
    drop(buf);
    // Not enough free command IDs for the next read: QueueFull, and it fits once they return.
    r.model.hold(true);
    q.submit_read(5, 0, 16384, pool.alloc().unwrap()).unwrap();
    let (e, buf) = q.submit_read(6, 0, 24576, pool.alloc().unwrap()).unwrap_err();
    assert_eq!(e, StorageError::QueueFull);
    assert_eq!(q.in_flight(), 1);
    r.model.flush();
    r.model.hold(false);
    assert_eq!(poll_for(&mut q, 1, Duration::from_secs(1))[0].result, Ok(()));
    q.submit_read(6, 0, 24576, buf).unwrap();
    assert_eq!(poll_for(&mut q, 1, Duration::from_secs(1))[0].result, Ok(()));
    // A media error in the second command fails the whole read, once.
    r.model.fail_lba(16 + 3);
    q.submit_read(7, 0, 16384, pool.alloc().unwrap()).unwrap();
    let done = poll_for(&mut q, 1, Duration::from_secs(1));
    assert!(matches!(done[0].result, Err(StorageError::Device(ref t)) if t.contains("unrecovered")));
    drop(done);
    let c = q.counters();
    assert_eq!((c.reads, c.errors), (5, 2));
    assert_eq!(q.in_flight(), 0);
    r.assert_no_protocol_errors();
}

#[test]
fn nvme_namespace_formats_are_checked() {
    let r = rig(ModelConfig { lbads: 12, ..ModelConfig::default() });
    let ctrl = r.controller(&config(4)).unwrap();
    assert_eq!(ctrl.namespace().lba_size, 4096);
    let mut q = ctrl.into_queues().unwrap().remove(0).into_storage();
    let pool = q.dma_pool(8192, 1).unwrap();
    q.submit_read(0, 4096 * 9, 8192, pool.alloc().unwrap()).unwrap();
    let done = poll_for(&mut q, 1, Duration::from_secs(1));
    check_bytes(&done[0].buf, 4096 * 9, 8192);

    let e = rig(ModelConfig { lbads: 13, ..ModelConfig::default() }).controller(&config(4)).unwrap_err();
    assert!(e.to_string().contains("8192-byte logical blocks"), "{e}");
    let e = rig(ModelConfig { metadata: 8, ..ModelConfig::default() }).controller(&config(4)).unwrap_err();
    assert!(e.to_string().contains("metadata"), "{e}");
}

#[test]
fn nvme_silent_controller_times_out_resets_and_serves_again() {
    let r = rig(ModelConfig::default());
    let mut q = r.queue(&config(4));
    let pool = q.dma_pool(4096, 4).unwrap();
    r.model.hang();
    q.submit_read(1, 0, 4096, pool.alloc().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    q.submit_read(2, 4096, 4096, pool.alloc().unwrap()).unwrap();
    let done = poll_for(&mut q, 2, Duration::from_secs(3));
    assert_eq!(done.len(), 2);
    let by_tag = |t: u64| done.iter().find(|c| c.tag == t).unwrap();
    assert_eq!(by_tag(1).result, Err(StorageError::Timeout));
    assert!(matches!(by_tag(2).result, Err(StorageError::Device(ref t)) if t.contains("reset")));
    drop(done);
    assert_eq!(pool.available(), 4, "buffers came back after the reset");
    assert!(!r.model.dma_stopped(), "a reset that worked leaves bus mastering on");
    assert_eq!(q.controller_resets(), 1);
    let stats = r.model.stats();
    assert_eq!((stats.enables, stats.disables), (2, 1), "enabled at start, reset once");
    let c = q.counters();
    assert_eq!((c.timeouts, c.errors, c.resets), (1, 2, 1));
    // The queue was re-created: reads work again.
    q.submit_read(3, 8192, 4096, pool.alloc().unwrap()).unwrap();
    let done = poll_for(&mut q, 1, Duration::from_secs(1));
    assert_eq!(done[0].result, Ok(()));
    check_bytes(&done[0].buf, 8192, 4096);
    assert_eq!(r.model.stats().io_queues_created, 2);
    r.assert_no_protocol_errors();
}

#[test]
fn nvme_reset_by_one_queue_ends_reads_of_the_others() {
    let r = rig(ModelConfig::default());
    let ctrl = r.controller(&NvmeConfig { io_queues: 2, ..config(4) }).unwrap();
    assert_eq!(ctrl.io_queues(), 2);
    let mut queues = ctrl.into_queues().unwrap();
    let mut q2 = queues.pop().unwrap().into_storage();
    let mut q1 = queues.pop().unwrap().into_storage();
    assert_eq!((q1.queue_id(), q2.queue_id()), (1, 2));
    let p1 = q1.dma_pool(4096, 2).unwrap();
    let p2 = q2.dma_pool(4096, 2).unwrap();
    // Both queues serve, each from its own ring.
    q2.submit_read(20, 4096, 4096, p2.alloc().unwrap()).unwrap();
    assert_eq!(poll_for(&mut q2, 1, Duration::from_secs(1))[0].result, Ok(()));
    r.model.hang();
    q2.submit_read(21, 0, 4096, p2.alloc().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    q1.submit_read(10, 0, 4096, p1.alloc().unwrap()).unwrap();
    // q2's read is the older one, but q1 may notice first: whoever polls resets.
    std::thread::sleep(Duration::from_millis(70));
    let d1 = poll_for(&mut q1, 1, Duration::from_secs(2));
    assert_eq!(d1[0].result, Err(StorageError::Timeout));
    let d2 = poll_for(&mut q2, 1, Duration::from_secs(2));
    assert!(matches!(d2[0].result, Err(StorageError::Timeout)), "q2's read was also overdue: {:?}", d2[0].result);
    assert_eq!(q1.controller_resets(), 1, "one reset serves every queue");
    drop((d1, d2));
    for (q, p) in [(&mut q1, &p1), (&mut q2, &p2)] {
        q.submit_read(30, 4096 * 4, 4096, p.alloc().unwrap()).unwrap();
        let d = poll_for(q, 1, Duration::from_secs(1));
        assert_eq!(d[0].result, Ok(()));
        check_bytes(&d[0].buf, 4096 * 4, 4096);
    }
    assert_eq!(r.model.stats().io_queues_created, 4);
    r.assert_no_protocol_errors();
}

#[test]
fn nvme_reset_aborts_young_reads_on_other_queues() {
    let r = rig(ModelConfig::default());
    let mut queues = r.controller(&NvmeConfig { io_queues: 2, ..config(4) }).unwrap().into_queues().unwrap();
    let mut q2 = queues.pop().unwrap().into_storage();
    let mut q1 = queues.pop().unwrap().into_storage();
    let p1 = q1.dma_pool(4096, 1).unwrap();
    let p2 = q2.dma_pool(4096, 1).unwrap();
    r.model.hang();
    q1.submit_read(1, 0, 4096, p1.alloc().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(70));
    q2.submit_read(2, 0, 4096, p2.alloc().unwrap()).unwrap();
    assert_eq!(poll_for(&mut q1, 1, Duration::from_secs(2))[0].result, Err(StorageError::Timeout));
    let d2 = poll_for(&mut q2, 1, Duration::from_secs(2));
    assert!(matches!(d2[0].result, Err(StorageError::Device(ref t)) if t.contains("reset")), "{:?}", d2[0].result);
    assert_eq!(q2.counters().timeouts, 0);
}

#[test]
fn nvme_dead_controller_fails_reads_without_hanging() {
    let r = rig(ModelConfig { timeout_units: 1, ..ModelConfig::default() });
    let mut q = r.queue(&config(4));
    let pool = q.dma_pool(4096, 2).unwrap();
    r.model.die();
    q.submit_read(1, 0, 4096, pool.alloc().unwrap()).unwrap();
    let start = Instant::now();
    let done = poll_for(&mut q, 1, Duration::from_secs(5));
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(done[0].result, Err(StorageError::Timeout));
    assert!(r.model.dma_stopped(), "a controller that ignores reset is cut off the bus");
    drop(done);
    let (e, _) = q.submit_read(2, 0, 4096, pool.alloc().unwrap()).unwrap_err();
    assert!(matches!(e, StorageError::Device(ref t) if t.contains("controller failed")), "{e}");
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn nvme_close_disables_the_controller_and_releases_dma_memory() {
    let r = rig(ModelConfig::default());
    let mut q = r.queue(&config(4));
    let pool = q.dma_pool(4096, 2).unwrap();
    let buf = pool.alloc().unwrap();
    assert!(r.dma.live_regions() > 0);
    drop(q);
    assert_eq!(r.model.cc() & 1, 0, "controller disabled once the last queue is gone");
    drop(pool);
    assert!(r.dma.live_regions() > 0, "a buffer still out keeps its pool mapped");
    drop(buf);
    assert_eq!(r.dma.live_regions(), 0);
}

#[test]
fn nvme_slow_ready_and_granted_queue_count() {
    let r = rig(ModelConfig { ready_delay_reads: 50, max_io_queues: 2, ..ModelConfig::default() });
    let ctrl = r.controller(&NvmeConfig { io_queues: 4, ..config(4) }).unwrap();
    assert_eq!(ctrl.io_queues(), 2, "the controller granted two");
    assert_eq!(ctrl.into_queues().unwrap().len(), 2);
    r.assert_no_protocol_errors();
}

#[test]
fn nvme_queues_move_to_their_core_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<NvmeQueue>();
    let r = rig(ModelConfig::default());
    let queues = r.controller(&NvmeConfig { io_queues: 2, ..config(4) }).unwrap().into_queues().unwrap();
    let handles: Vec<_> = queues
        .into_iter()
        .map(|queue| {
            std::thread::spawn(move || {
                let mut q = queue.into_storage();
                let pool = q.dma_pool(8192, 2).unwrap();
                let offset = q.queue_id() as u64 * 8192;
                q.submit_read(0, offset, 8192, pool.alloc().unwrap()).unwrap();
                let done = poll_for(&mut q, 1, Duration::from_secs(1));
                assert_eq!(done[0].result, Ok(()));
                check_bytes(&done[0].buf, offset, 8192);
                q.counters().reads
            })
        })
        .collect();
    let reads: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(reads, 2);
    r.assert_no_protocol_errors();
}

#[test]
fn nvme_operator_reset_ends_reads_and_queues_come_back() {
    let r = rig(ModelConfig::default());
    let mut queues = r.controller(&NvmeConfig { io_queues: 2, ..config(4) }).unwrap().into_queues().unwrap();
    let mut q2 = queues.pop().unwrap().into_storage();
    let mut q1 = queues.pop().unwrap().into_storage();
    let p1 = q1.dma_pool(4096, 2).unwrap();
    let p2 = q2.dma_pool(4096, 2).unwrap();
    r.model.hold(true);
    q1.submit_read(1, 0, 4096, p1.alloc().unwrap()).unwrap();
    q2.submit_read(2, 0, 4096, p2.alloc().unwrap()).unwrap();
    r.model.hold(false);
    q1.reset_controller().unwrap();
    for q in [&mut q1, &mut q2] {
        let d = poll_for(q, 1, Duration::from_secs(1));
        assert!(matches!(d[0].result, Err(StorageError::Device(ref t)) if t.contains("reset")), "{:?}", d[0].result);
    }
    assert_eq!(q1.controller_resets(), 1);
    for (q, p) in [(&mut q1, &p1), (&mut q2, &p2)] {
        q.submit_read(3, 4096, 4096, p.alloc().unwrap()).unwrap();
        let d = poll_for(q, 1, Duration::from_secs(1));
        assert_eq!(d[0].result, Ok(()));
        check_bytes(&d[0].buf, 4096, 4096);
    }
    r.assert_no_protocol_errors();
}
