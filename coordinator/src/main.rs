fn main() {
    println!("nnunet (being written)");
}
