//! Compile-time behaviour of the macros: what compiles, and the errors (with their spans) for
//! what must not. Regenerate the expected output with `TRYBUILD=overwrite`, then review it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
