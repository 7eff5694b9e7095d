//! Physical Region Page entries: how a command tells the controller where its data goes.
//!
//! PRP1 is the transfer's first address (any dword-aligned offset in a page). If the data
//! reaches one page further, PRP2 is that page; if it reaches further still, PRP2 points at a
//! list of the following page addresses. Each command slot owns one list page, so a transfer
//! is at most `page_size / 8` pages (2 MiB with 4 KiB pages) and needs no chained lists.
use super::memory::DmaRegion;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrpError {
    #[error("buffer address {0:#x} is not 4-byte aligned")]
    Misaligned(u64),
    #[error("transfer of {len} bytes exceeds the {max} byte PRP list limit")]
    TooLong { len: usize, max: usize },
    #[error("empty transfer")]
    Empty,
}

/// The two PRP fields of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prps {
    pub prp1: u64,
    pub prp2: u64,
}

/// One PRP list page per command slot, in DMA memory.
#[derive(Debug)]
pub struct PrpLists {
    region: DmaRegion,
    page_size: usize,
    slots: usize,
}

impl PrpLists {
    /// `region` must hold `slots` pages of `page_size` bytes, page aligned in IOVA space.
    pub fn new(region: DmaRegion, page_size: usize, slots: usize) -> PrpLists {
        assert!(page_size.is_power_of_two() && page_size >= 4096);
        assert!(region.len() >= page_size * slots && region.iova().is_multiple_of(page_size as u64));
        PrpLists { region, page_size, slots }
    }

    /// Longest transfer a single command may carry.
    pub fn max_transfer(page_size: usize) -> usize {
        page_size * (page_size / 8)
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// PRPs for `len` bytes at device address `iova`, using slot `slot`'s list page if needed.
    pub fn build(&self, slot: usize, iova: u64, len: usize) -> Result<Prps, PrpError> {
        assert!(slot < self.slots);
        if len == 0 {
            return Err(PrpError::Empty);
        }
        if !iova.is_multiple_of(4) {
            return Err(PrpError::Misaligned(iova));
        }
        let max = Self::max_transfer(self.page_size);
        if len > max {
            return Err(PrpError::TooLong { len, max });
        }
        let page = self.page_size as u64;
        let first_len = (page - iova % page) as usize;
        if len <= first_len {
            return Ok(Prps { prp1: iova, prp2: 0 });
        }
        let second_page = (iova / page + 1) * page;
        let rest_pages = (len - first_len).div_ceil(self.page_size);
        if rest_pages == 1 {
            return Ok(Prps { prp1: iova, prp2: second_page });
        }
        let list_off = slot * self.page_size;
        for i in 0..rest_pages {
            self.region.write::<u64>(list_off + 8 * i, second_page + i as u64 * page);
        }
        Ok(Prps { prp1: iova, prp2: self.region.iova() + list_off as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::nvme::memory::DmaMemory;
    use crate::storage::nvme::model::FakeDma;

    fn lists() -> (FakeDma, PrpLists) {
        let dma = FakeDma::new();
        let region = dma.alloc(4 * 4096).unwrap();
        (dma.clone(), PrpLists::new(region, 4096, 4))
    }

    #[test]
    fn one_page_uses_prp1_only() {
        let (_d, l) = lists();
        assert_eq!(l.build(0, 0x10_0000, 4096).unwrap(), Prps { prp1: 0x10_0000, prp2: 0 });
        assert_eq!(l.build(0, 0x10_0200, 512).unwrap(), Prps { prp1: 0x10_0200, prp2: 0 });
    }

    #[test]
    fn two_pages_use_prp2_as_page_pointer() {
        let (_d, l) = lists();
        assert_eq!(l.build(0, 0x10_0000, 8192).unwrap(), Prps { prp1: 0x10_0000, prp2: 0x10_1000 });
        // Crossing one page boundary from an offset also needs only two entries.
        assert_eq!(l.build(0, 0x10_0800, 4096).unwrap(), Prps { prp1: 0x10_0800, prp2: 0x10_1000 });
    }

    #[test]
    fn longer_transfers_use_the_slot_list_page() {
        let (dma, l) = lists();
        let p = l.build(2, 0x20_0800, 3 * 4096).unwrap();
        assert_eq!(p.prp1, 0x20_0800);
        assert_eq!(p.prp2, l.region.iova() + 2 * 4096);
        let entries: Vec<u64> = (0..3).map(|i| dma.read_u64(p.prp2 + 8 * i)).collect();
        assert_eq!(entries, vec![0x20_1000, 0x20_2000, 0x20_3000]);
    }

    #[test]
    fn bad_transfers_are_refused() {
        let (_d, l) = lists();
        assert_eq!(l.build(0, 0x1002, 16), Err(PrpError::Misaligned(0x1002)));
        assert_eq!(l.build(0, 0x1000, 0), Err(PrpError::Empty));
        assert!(matches!(l.build(0, 0x1000, 512 * 4096 + 1), Err(PrpError::TooLong { .. })));
        assert!(l.build(0, 0x1000, 512 * 4096).is_ok());
    }
}
