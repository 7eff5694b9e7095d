//! Finds DPDK with pkg-config (`libdpdk`), compiles the C shim against its headers and
//! generates Rust bindings for the API the NIC backend uses. Links DPDK's shared libraries:
//! the EAL then loads poll-mode drivers from its own plugin directory at run time.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let lib = pkg_config::Config::new()
        .cargo_metadata(true)
        .probe("libdpdk")
        .unwrap_or_else(|e| {
            panic!(
                "dpdk-sys needs DPDK's development files, found with pkg-config as `libdpdk` \
                 (on Debian: apt-get install libdpdk-dev pkg-config clang libclang-dev): {e}"
            )
        });
    println!("cargo:version={}", lib.version);

    // pkg-config's Cflags carry more than include paths (`-include rte_config.h`, `-march=...`
    // that the inline functions in the headers need), so take them whole.
    let cflags = dpdk_cflags();

    let mut build = cc::Build::new();
    build.file("shim/shim.c").include("shim").warnings(false);
    for flag in &cflags {
        build.flag(flag);
    }
    build.compile("dpdk_sys_shim");

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let bindings = bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_args(&cflags)
        .clang_arg("-Ishim")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .allowlist_function("dpdk_sys_.*")
        .allowlist_var("dpdk_sys_.*")
        .allowlist_var("DPDK_SYS_.*")
        .allowlist_function("rte_eal_init")
        .allowlist_function("rte_eal_cleanup")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_thread_register")
        .allowlist_function("rte_thread_unregister")
        .allowlist_function("rte_version")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_mempool_avail_count")
        .allowlist_function("rte_mempool_in_use_count")
        .allowlist_function("rte_pktmbuf_free_bulk")
        .allowlist_function("rte_eth_dev_count_avail")
        .allowlist_function("rte_eth_dev_is_valid_port")
        .allowlist_function("rte_eth_dev_socket_id")
        .allowlist_function("rte_eth_dev_info_get")
        .allowlist_function("rte_eth_dev_configure")
        .allowlist_function("rte_eth_dev_adjust_nb_rx_tx_desc")
        .allowlist_function("rte_eth_rx_queue_setup")
        .allowlist_function("rte_eth_tx_queue_setup")
        .allowlist_function("rte_eth_dev_start")
        .allowlist_function("rte_eth_dev_stop")
        .allowlist_function("rte_eth_dev_close")
        .allowlist_function("rte_eth_promiscuous_disable")
        .allowlist_function("rte_eth_macaddr_get")
        .allowlist_function("rte_eth_dev_get_mtu")
        .allowlist_function("rte_eth_dev_set_mtu")
        .allowlist_function("rte_eth_stats_get")
        .allowlist_function("rte_eth_xstats_get")
        .allowlist_function("rte_eth_xstats_get_names")
        .allowlist_type("rte_eth_rx_mq_mode")
        .allowlist_type("rte_eth_tx_mq_mode")
        // Only ever handled through pointers: their layout stays DPDK's business.
        .opaque_type("rte_mbuf")
        .opaque_type("rte_mempool")
        .opaque_type("rte_mbuf_ext_shared_info")
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen could not generate the DPDK bindings");
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("cannot write bindings.rs");
}

fn dpdk_cflags() -> Vec<String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let output = Command::new(&pkg_config)
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {pkg_config}: {e}"));
    assert!(
        output.status.success(),
        "{pkg_config} --cflags libdpdk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("pkg-config printed UTF-8");
    let mut flags = Vec::new();
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        // `-include rte_config.h` is two words that belong together.
        if word == "-include" {
            if let Some(file) = words.next() {
                flags.push(format!("-include{file}"));
            }
        } else {
            flags.push(word.to_string());
        }
    }
    flags
}
