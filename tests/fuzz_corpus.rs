//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets'
//! bodies on every test run: inputs that once found a bug stay fixed, and the targets keep
//! compiling. (`cargo fuzz run <target>` explores further; CI runs a short pass of each.)

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

#[test]
fn every_corpus_input_is_handled_without_panicking() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in targets::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: no corpus", dir.display());
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            // A panic names the input: reproduce with `cargo fuzz run <target> <input>`.
            eprintln!("{name}: {}", input.display());
            target(&data);
        }
    }
}
