fn main() {
    kvxfer::cli::main_send()
}
