fn main() {
    println!("nnunet-worker (being written)");
}
