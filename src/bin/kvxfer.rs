fn main() {
    kvxfer::cli::main_kvxfer()
}
