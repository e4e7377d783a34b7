fn main() {
    println!("logstream-gateway: the gateway is being built (issue 5)");
}
