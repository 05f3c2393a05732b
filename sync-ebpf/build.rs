//! Rebuild the eBPF object when bpf-linker changes: the linker is part of the
//! toolchain here, and a new one can change the emitted BTF.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
