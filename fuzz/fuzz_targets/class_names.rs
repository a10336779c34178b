//! A class-name file (`--class-names`: one name per line, `id,name` or `id,name,superclass` CSV).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let _ = genie::classes::ClassNames::parse(text, "names.txt".as_ref(), flag & 1 == 1);
});
