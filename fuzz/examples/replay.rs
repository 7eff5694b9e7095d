//! Replays inputs of a fuzz target without libFuzzer, with debug assertions when built in the
//! dev profile: `cargo run --example replay -- net_frames <file>...`. Only `net_frames` is
//! here: the other targets are quick to reproduce with their fuzz binaries (docs/fuzzing.md).
fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay <target> <file>...");
    for path in args {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        match target.as_str() {
            "net_frames" => appliance_fuzz::net::run(&data),
            other => panic!("replay knows net_frames only, not {other}"),
        }
        println!("{path}: ok");
    }
}
