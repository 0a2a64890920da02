fn main() {
    afl::fuzz!(|data: &[u8]| {
        mlguard_fuzz::checks::object(data);
    });
}
