/* rte_dev_dma_map/unmap are still experimental in DPDK 22.11. */
#define ALLOW_EXPERIMENTAL_API 1

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

const struct dpdk_sys_consts dpdk_sys_consts = {
    .rss_ip = RTE_ETH_RSS_IP,
    .rss_tcp = RTE_ETH_RSS_TCP,
    .rss_udp = RTE_ETH_RSS_UDP,
    .rx_offload_ipv4_cksum = RTE_ETH_RX_OFFLOAD_IPV4_CKSUM,
    .rx_offload_tcp_cksum = RTE_ETH_RX_OFFLOAD_TCP_CKSUM,
    .rx_offload_udp_cksum = RTE_ETH_RX_OFFLOAD_UDP_CKSUM,
    .tx_offload_ipv4_cksum = RTE_ETH_TX_OFFLOAD_IPV4_CKSUM,
    .tx_offload_tcp_cksum = RTE_ETH_TX_OFFLOAD_TCP_CKSUM,
    .tx_offload_udp_cksum = RTE_ETH_TX_OFFLOAD_UDP_CKSUM,
    .tx_offload_tcp_tso = RTE_ETH_TX_OFFLOAD_TCP_TSO,
    .tx_offload_multi_segs = RTE_ETH_TX_OFFLOAD_MULTI_SEGS,
    .tx_offload_mbuf_fast_free = RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE,
    .tx_offload_vlan_insert = RTE_ETH_TX_OFFLOAD_VLAN_INSERT,
    .mbuf_tx_ipv4 = RTE_MBUF_F_TX_IPV4,
    .mbuf_tx_ip_cksum = RTE_MBUF_F_TX_IP_CKSUM,
    .mbuf_tx_tcp_cksum = RTE_MBUF_F_TX_TCP_CKSUM,
    .mbuf_tx_tcp_seg = RTE_MBUF_F_TX_TCP_SEG,
    .mbuf_default_buf_size = RTE_MBUF_DEFAULT_BUF_SIZE,
    .pktmbuf_headroom = RTE_PKTMBUF_HEADROOM,
    .max_ethports = RTE_MAX_ETHPORTS,
    .lcore_id_any = LCORE_ID_ANY,
    .socket_id_any = SOCKET_ID_ANY,
};

uint16_t dpdk_sys_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t dpdk_sys_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_tx_burst(port, queue, pkts, n);
}

uint16_t dpdk_sys_tx_prepare(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_tx_prepare(port, queue, pkts, n);
}

struct rte_mbuf *dpdk_sys_pktmbuf_alloc(struct rte_mempool *pool)
{
    return rte_pktmbuf_alloc(pool);
}

void dpdk_sys_pktmbuf_free(struct rte_mbuf *m)
{
    rte_pktmbuf_free(m);
}

void *dpdk_sys_pktmbuf_mtod(struct rte_mbuf *m)
{
    return rte_pktmbuf_mtod(m, void *);
}

uint16_t dpdk_sys_pktmbuf_data_len(const struct rte_mbuf *m)
{
    return rte_pktmbuf_data_len(m);
}

uint8_t dpdk_sys_rx_cksum_verdicts(const struct rte_mbuf *m)
{
    uint8_t v = DPDK_SYS_CKSUM_UNCHECKED;
    switch (m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK) {
    case RTE_MBUF_F_RX_IP_CKSUM_GOOD:
    case RTE_MBUF_F_RX_IP_CKSUM_NONE:
        v |= DPDK_SYS_CKSUM_GOOD;
        break;
    case RTE_MBUF_F_RX_IP_CKSUM_BAD:
        v |= DPDK_SYS_CKSUM_BAD;
        break;
    default: /* unknown: not checked */
        break;
    }
    switch (m->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK) {
    case RTE_MBUF_F_RX_L4_CKSUM_GOOD:
    case RTE_MBUF_F_RX_L4_CKSUM_NONE:
        v |= DPDK_SYS_CKSUM_GOOD << 2;
        break;
    case RTE_MBUF_F_RX_L4_CKSUM_BAD:
        v |= DPDK_SYS_CKSUM_BAD << 2;
        break;
    default:
        break;
    }
    return v;
}

uint32_t dpdk_sys_pktmbuf_pkt_len(const struct rte_mbuf *m)
{
    return rte_pktmbuf_pkt_len(m);
}

uint16_t dpdk_sys_pktmbuf_nb_segs(const struct rte_mbuf *m)
{
    return m->nb_segs;
}

uint16_t dpdk_sys_pktmbuf_tailroom(const struct rte_mbuf *m)
{
    return rte_pktmbuf_tailroom(m);
}

char *dpdk_sys_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
    return rte_pktmbuf_append(m, len);
}

int dpdk_sys_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail)
{
    return rte_pktmbuf_chain(head, tail);
}

/* The memory is the caller's: nothing to give back when the last mbuf lets go of it. */
static void dpdk_sys_ext_noop_free(void *addr, void *opaque)
{
    (void)addr;
    (void)opaque;
}

struct rte_mbuf_ext_shared_info *dpdk_sys_ext_shinfo_new(void)
{
    /* Only the CPU touches it (the PMD frees mbufs with it): plain heap memory will do. */
    struct rte_mbuf_ext_shared_info *shinfo = calloc(1, sizeof(*shinfo));

    if (shinfo == NULL)
        return NULL;
    shinfo->free_cb = dpdk_sys_ext_noop_free;
    shinfo->fcb_opaque = NULL;
    rte_mbuf_ext_refcnt_set(shinfo, 1);
    return shinfo;
}

uint16_t dpdk_sys_ext_shinfo_refcnt(const struct rte_mbuf_ext_shared_info *shinfo)
{
    return rte_mbuf_ext_refcnt_read(shinfo);
}

int dpdk_sys_tx_done_cleanup(uint16_t port, uint16_t queue)
{
    return rte_eth_tx_done_cleanup(port, queue, 0);
}

int dpdk_sys_iova_is_va(void)
{
    return rte_eal_iova_mode() == RTE_IOVA_VA;
}

static struct rte_device *dpdk_sys_port_device(uint16_t port)
{
    struct rte_eth_dev_info info;

    if (rte_eth_dev_info_get(port, &info) != 0)
        return NULL;
    return info.device;
}

int dpdk_sys_extmem_dma_map(uint16_t port, void *addr, uint64_t iova, size_t len, size_t page_sz,
                            int *stage)
{
    struct rte_device *dev = dpdk_sys_port_device(port);

    *stage = 1;
    if (dev == NULL)
        return -ENODEV;
    if (rte_extmem_register(addr, len, NULL, 0, page_sz) != 0 && rte_errno != EEXIST)
        return -rte_errno;
    *stage = 2;
    if (rte_dev_dma_map(dev, addr, iova, len) != 0 && rte_errno != EEXIST) {
        int err = rte_errno;

        rte_extmem_unregister(addr, len);
        return err > 0 ? -err : -EIO;
    }
    return 0;
}

void dpdk_sys_extmem_dma_unmap(uint16_t port, void *addr, uint64_t iova, size_t len)
{
    struct rte_device *dev = dpdk_sys_port_device(port);

    if (dev != NULL)
        rte_dev_dma_unmap(dev, addr, iova, len);
    rte_extmem_unregister(addr, len);
}

void dpdk_sys_pktmbuf_attach_ext(struct rte_mbuf *m, void *addr, uint64_t iova, uint16_t len,
                                 struct rte_mbuf_ext_shared_info *shinfo)
{
    rte_mbuf_ext_refcnt_update(shinfo, 1);
    rte_pktmbuf_attach_extbuf(m, addr, (rte_iova_t)iova, len, shinfo);
    m->data_len = len;
    m->pkt_len = len;
}

void dpdk_sys_pktmbuf_set_tx_offload(struct rte_mbuf *m, uint64_t ol_flags, uint16_t l2_len,
                                     uint16_t l3_len, uint16_t l4_len, uint16_t tso_segsz)
{
    m->ol_flags |= ol_flags;
    m->l2_len = l2_len;
    m->l3_len = l3_len;
    m->l4_len = l4_len;
    m->tso_segsz = tso_segsz;
}

int dpdk_sys_pktmbuf_tcp4_tx_offload(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len,
                                     uint16_t l4_len, uint16_t tso_segsz)
{
    struct rte_ipv4_hdr *ip;
    struct rte_tcp_hdr *tcp;
    uint64_t ol_flags = RTE_MBUF_F_TX_IPV4;

    if (l3_len < sizeof(*ip) || l4_len < sizeof(*tcp) ||
        rte_pktmbuf_data_len(m) < (uint32_t)l2_len + l3_len + l4_len)
        return -1;
    ip = rte_pktmbuf_mtod_offset(m, struct rte_ipv4_hdr *, l2_len);
    tcp = rte_pktmbuf_mtod_offset(m, struct rte_tcp_hdr *, l2_len + l3_len);
    if (tso_segsz != 0) {
        /* TX_TCP_SEG implies the TCP checksum. */
        ol_flags |= RTE_MBUF_F_TX_TCP_SEG | RTE_MBUF_F_TX_IP_CKSUM;
        ip->hdr_checksum = 0;
    } else {
        ol_flags |= RTE_MBUF_F_TX_TCP_CKSUM;
    }
    m->ol_flags |= ol_flags;
    m->l2_len = l2_len;
    m->l3_len = l3_len;
    m->l4_len = l4_len;
    m->tso_segsz = tso_segsz;
    tcp->cksum = rte_ipv4_phdr_cksum(ip, m->ol_flags);
    return 0;
}

int dpdk_sys_log_to_stderr(void)
{
    return rte_openlog_stream(stderr);
}

unsigned dpdk_sys_lcore_id(void)
{
    return rte_lcore_id();
}

int dpdk_sys_errno(void)
{
    return rte_errno;
}

int dpdk_sys_link_get(uint16_t port, int *up, uint32_t *speed_mbps)
{
    struct rte_eth_link link;
    int ret;

    memset(&link, 0, sizeof(link));
    ret = rte_eth_link_get_nowait(port, &link);
    if (ret == 0) {
        *up = link.link_status == RTE_ETH_LINK_UP;
        *speed_mbps = link.link_speed;
    }
    return ret;
}
