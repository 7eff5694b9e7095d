/* The part of DPDK's API that is static inline or macro-only in its headers, exported as
 * plain functions and constants so that Rust can call them. Compiled against whatever DPDK
 * pkg-config finds: nothing here depends on a struct layout known in advance. */
#ifndef DPDK_SYS_SHIM_H
#define DPDK_SYS_SHIM_H

#include <stdint.h>
#include <rte_config.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_memory.h>
#include <rte_mempool.h>
#include <rte_tcp.h>
#include <rte_version.h>

/* Flag words that DPDK defines with RTE_BIT64() (which bindgen cannot evaluate). */
struct dpdk_sys_consts {
    uint64_t rss_ip;
    uint64_t rss_tcp;
    uint64_t rss_udp;
    uint64_t rx_offload_ipv4_cksum;
    uint64_t rx_offload_tcp_cksum;
    uint64_t rx_offload_udp_cksum;
    uint64_t tx_offload_ipv4_cksum;
    uint64_t tx_offload_tcp_cksum;
    uint64_t tx_offload_udp_cksum;
    uint64_t tx_offload_tcp_tso;
    uint64_t tx_offload_multi_segs;
    uint64_t tx_offload_mbuf_fast_free;
    uint64_t tx_offload_vlan_insert;
    uint64_t mbuf_tx_ipv4;
    uint64_t mbuf_tx_ip_cksum;
    uint64_t mbuf_tx_tcp_cksum;
    uint64_t mbuf_tx_tcp_seg;
    uint32_t mbuf_default_buf_size;
    uint32_t pktmbuf_headroom;
    uint32_t max_ethports;
    uint32_t lcore_id_any;
    int socket_id_any;
};
extern const struct dpdk_sys_consts dpdk_sys_consts;

uint16_t dpdk_sys_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t dpdk_sys_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
/* rte_eth_tx_prepare: the PMD checks (and where it must, fixes up) the offload requests of
 * the first n packets; returns how many are fit to send (rte_errno says why the next is not). */
uint16_t dpdk_sys_tx_prepare(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *dpdk_sys_pktmbuf_alloc(struct rte_mempool *pool);
void dpdk_sys_pktmbuf_free(struct rte_mbuf *m);
/* Start of the data of the first segment. */
void *dpdk_sys_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t dpdk_sys_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t dpdk_sys_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t dpdk_sys_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* Receive checksum offload verdicts of a received mbuf: bits 0-1 the IPv4 header checksum's,
 * bits 2-3 the L4 checksum's, each DPDK_SYS_CKSUM_UNCHECKED, _GOOD or _BAD. DPDK's "none"
 * (the checksum in the packet is not filled in, but the data is intact: a virtio peer on the
 * same host left it to offload) counts as good. */
#define DPDK_SYS_CKSUM_UNCHECKED 0
#define DPDK_SYS_CKSUM_GOOD 1
#define DPDK_SYS_CKSUM_BAD 2
uint8_t dpdk_sys_rx_cksum_verdicts(const struct rte_mbuf *m);
uint16_t dpdk_sys_pktmbuf_tailroom(const struct rte_mbuf *m);
/* Grows the last segment by len bytes; NULL when it has not the room. */
char *dpdk_sys_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
/* Appends tail's segments to head's chain; non-zero when the chain would be too long. */
int dpdk_sys_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail);
/* Zero-copy transmit. A shared-info block for external buffers the backend does not own: its
 * free callback does nothing (the memory belongs to the caller, e.g. the storage pool) and its
 * reference count starts at 1 (the backend's own, never dropped), so that count minus one is
 * how many mbufs still point at caller memory through it. NULL when out of memory. */
struct rte_mbuf_ext_shared_info *dpdk_sys_ext_shinfo_new(void);
uint16_t dpdk_sys_ext_shinfo_refcnt(const struct rte_mbuf_ext_shared_info *shinfo);
/* Frees what the device is done with on a TX queue (rte_eth_tx_done_cleanup, free_cnt 0: all
 * it can): how many packets were freed, or a negative errno (-ENOTSUP: the PMD has no such
 * call, its next transmit burst frees them). */
int dpdk_sys_tx_done_cleanup(uint16_t port, uint16_t queue);
/* 1 when the EAL's IOVA mode is VA (device addresses are virtual addresses), else 0. */
int dpdk_sys_iova_is_va(void);
/* Makes len bytes of memory not DPDK's own at addr (aligned to page_sz, len a multiple of it)
 * known to DPDK (rte_extmem_register, no IOVA table), then maps them for DMA by port's device
 * at device address iova (rte_dev_dma_map: the vfio container of a PCI device). 0 on success,
 * else a negative errno; *stage says which step failed (1 register, 2 map). Memory already
 * registered or mapped (EEXIST) counts as done. */
int dpdk_sys_extmem_dma_map(uint16_t port, void *addr, uint64_t iova, size_t len, size_t page_sz,
                            int *stage);
/* Undoes dpdk_sys_extmem_dma_map (the device must no longer read the memory). */
void dpdk_sys_extmem_dma_unmap(uint16_t port, void *addr, uint64_t iova, size_t len);
/* Points the fresh mbuf m (from rte_pktmbuf_alloc) at len bytes of caller memory at addr
 * (device address iova) as an external buffer under shinfo, taking one reference on shinfo,
 * and makes them its data (data_len = pkt_len = len). */
void dpdk_sys_pktmbuf_attach_ext(struct rte_mbuf *m, void *addr, uint64_t iova, uint16_t len,
                                 struct rte_mbuf_ext_shared_info *shinfo);
/* Offload request of one packet: ol_flags plus header lengths and the TSO segment size. */
void dpdk_sys_pktmbuf_set_tx_offload(struct rte_mbuf *m, uint64_t ol_flags, uint16_t l2_len,
                                     uint16_t l3_len, uint16_t l4_len, uint16_t tso_segsz);
/* Asks the device for the TCP checksum of the IPv4/TCP packet m and, when tso_segsz is not 0,
 * to cut its payload into segments of tso_segsz bytes (TSO): sets ol_flags (TX_IPV4 with
 * TX_TCP_CKSUM, or with TX_TCP_SEG and TX_IP_CKSUM), l2_len, l3_len, l4_len and tso_segsz, and
 * prepares the headers as DPDK's offload API wants them: the TCP checksum field holds the
 * pseudo-header checksum (rte_ipv4_phdr_cksum: without the length under TSO) and, under TSO,
 * the IPv4 checksum is zero (the device fills it in per segment). The headers must lie in the
 * first segment: returns -1 (m untouched) when they do not, else 0. */
int dpdk_sys_pktmbuf_tcp4_tx_offload(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len,
                                     uint16_t l4_len, uint16_t tso_segsz);

/* Sends DPDK's log (EAL, PMDs) to stderr instead of stdout/syslog; callable before EAL init. */
int dpdk_sys_log_to_stderr(void);

unsigned dpdk_sys_lcore_id(void);
int dpdk_sys_errno(void);

/* Link state without waiting; returns rte_eth_link_get_nowait's result. */
int dpdk_sys_link_get(uint16_t port, int *up, uint32_t *speed_mbps);

#endif
