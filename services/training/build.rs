fn main() {
    cbir_torch_build::link_libtorch();
}
