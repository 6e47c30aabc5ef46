use super::*;

fn png(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    image::RgbImage::new(8, 8).save(path).expect("png");
}

#[test]
fn a_file_swapped_for_a_link_after_the_scan_is_not_read() {
    let base = tempfile::tempdir().expect("tmp");
    let root = base.path().join("set");
    for c in ["a", "b"] {
        for i in 0..3 {
            png(&root.join(c).join(format!("{i}.png")));
        }
    }
    let outside = base.path().join("outside.png");
    png(&outside);
    // A link inside the roots is listed by its target, and read.
    std::os::unix::fs::symlink(root.join("a/0.png"), root.join("b/linked.png")).expect("link");
    let roots = [root.clone()];
    let ds = scan(&root, 1, 0.0, 1, Links::Within(&roots)).expect("scan");
    let all: Vec<&Sample> = ds.train.iter().collect();
    assert_eq!(all.len(), 7);
    assert!(
        all.iter().all(|s| !s.path.ends_with("linked.png")),
        "by target"
    );
    for s in &all {
        read_sample(&ds, &s.path).expect("listed files read");
    }
    // After the scan, a listed file becomes a link out of the roots.
    let victim = &all
        .iter()
        .find(|s| s.path.ends_with("b/2.png"))
        .expect("b/2")
        .path;
    std::fs::remove_file(victim).expect("rm");
    std::os::unix::fs::symlink(&outside, victim).expect("link");
    let e = read_sample(&ds, victim).expect_err("a link now");
    assert!(e.contains("symbolic link"), "{e}");
    // And a class folder swapped for a link to outside: caught after the open.
    std::fs::rename(root.join("a"), base.path().join("a-moved")).expect("mv");
    std::fs::create_dir_all(base.path().join("elsewhere")).expect("mkdir");
    png(&base.path().join("elsewhere/1.png"));
    std::os::unix::fs::symlink(base.path().join("elsewhere"), root.join("a")).expect("link");
    let e = read_sample(&ds, &root.join("a/1.png")).expect_err("outside");
    assert!(e.contains("outside the allowed folders"), "{e}");
    assert!(
        !e.contains(&base.path().display().to_string()),
        "no path: {e}"
    );
}

#[test]
fn split_is_stratified_seeded_and_lists_unreadable_files() {
    let dir = tempfile::tempdir().expect("tmp");
    for c in ["a", "b"] {
        for i in 0..10 {
            png(&dir.path().join(c).join(format!("{i}.png")));
        }
    }
    std::fs::write(dir.path().join("a/broken.jpg"), b"not a jpeg").expect("write");
    let ds = scan(dir.path(), 5, 0.2, 7, Links::Refuse).expect("scan");
    assert_eq!(ds.classes, ["a", "b"]);
    assert_eq!(ds.validation.len(), 4);
    assert_eq!(ds.train.len(), 16);
    for c in 0..2 {
        assert_eq!(ds.validation.iter().filter(|s| s.class == c).count(), 2);
    }
    assert_eq!(ds.skipped.len(), 1);
    assert!(
        ds.skipped[0].starts_with("a/broken.jpg"),
        "{:?}",
        ds.skipped
    );
    let again = scan(dir.path(), 5, 0.2, 7, Links::Refuse).expect("scan");
    assert_eq!(again.validation, ds.validation);
}

#[test]
fn one_class_or_too_few_images_are_refused_with_reasons() {
    let dir = tempfile::tempdir().expect("tmp");
    for i in 0..3 {
        png(&dir.path().join("only").join(format!("{i}.png")));
    }
    let e = scan(dir.path(), 1, 0.2, 1, Links::Refuse)
        .expect_err("one class")
        .to_string();
    assert!(e.contains("at least 2"), "{e}");
    png(&dir.path().join("other/0.png"));
    let e = scan(dir.path(), 2, 0.2, 1, Links::Refuse)
        .expect_err("few")
        .to_string();
    assert!(
        e.contains("at least 2 readable images") && e.contains("other (1)"),
        "{e}"
    );
}

fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses '..'; write the raw name as an attacker would.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

#[test]
fn archives_that_escape_or_link_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let evil = dir.path().join("evil.tar");
    std::fs::write(
        &evil,
        tar_with(&[("a/1.png", b"x"), ("../escape.png", b"x")]),
    )
    .expect("w");
    let dest = dir.path().join("out");
    let e = unpack(&evil, ArchiveKind::Tar, &dest, ArchiveLimits::default())
        .expect_err("escape")
        .to_string();
    assert!(e.contains("outside its folder"), "{e}");
    assert!(!dest.exists(), "a refused archive left files behind");
    assert!(!dir.path().join("escape.png").exists());

    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "a/link.png", "/etc/passwd")
        .expect("link");
    let link = dir.path().join("link.tar");
    std::fs::write(&link, b.into_inner().expect("tar")).expect("w");
    let e = unpack(&link, ArchiveKind::Tar, &dest, ArchiveLimits::default())
        .expect_err("link")
        .to_string();
    assert!(e.contains("is a link"), "{e}");
}

#[test]
fn archive_size_limits_hold() {
    let dir = tempfile::tempdir().expect("tmp");
    let big = vec![0u8; 5000];
    let path = dir.path().join("big.tar");
    std::fs::write(&path, tar_with(&[("a/1.png", &big), ("a/2.png", &big)])).expect("w");
    let limits = ArchiveLimits {
        max_entries: 10,
        max_total_bytes: 8000,
        max_entry_bytes: 6000,
    };
    let e = unpack(&path, ArchiveKind::Tar, &dir.path().join("o1"), limits)
        .expect_err("total")
        .to_string();
    assert!(e.contains("more than 8000 bytes"), "{e}");
    let limits = ArchiveLimits {
        max_entry_bytes: 4000,
        ..limits
    };
    let e = unpack(&path, ArchiveKind::Tar, &dir.path().join("o2"), limits)
        .expect_err("entry")
        .to_string();
    assert!(e.contains("per file"), "{e}");
}

#[test]
fn zip_archives_unpack_and_find_the_class_folders() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("set.zip");
    {
        let f = std::fs::File::create(&path).expect("zip");
        let mut z = zip::ZipWriter::new(f);
        let o = zip::write::SimpleFileOptions::default();
        for n in ["flowers/a/1.png", "flowers/b/2.png", "flowers/readme.txt"] {
            z.start_file(n, o).expect("start");
            std::io::Write::write_all(&mut z, b"data").expect("write");
        }
        z.finish().expect("finish");
    }
    let dest = dir.path().join("out");
    unpack(&path, ArchiveKind::Zip, &dest, ArchiveLimits::default()).expect("unpack");
    assert!(dest.join("flowers/a/1.png").is_file());
    assert!(!dest.join("flowers/readme.txt").exists());
    assert_eq!(dataset_root(&dest), dest.join("flowers"));
    assert_eq!(
        ArchiveKind::from_name("x.TGZ").expect("kind"),
        ArchiveKind::TarGz
    );
    assert!(ArchiveKind::from_name("x.rar").is_err());
}
