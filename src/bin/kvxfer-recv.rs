fn main() {
    kvxfer::cli::main_recv()
}
