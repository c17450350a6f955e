//! deploy/Dockerfile's build stage, checked without a container engine:
//! for every `RUN ... cargo ...` step, the build context is assembled in a
//! temporary directory exactly as the COPY lines (honouring .dockerignore)
//! and the RUN lines' file stubs before it say, and then
//!
//! - cargo must plan the step's own command there (`--offline`, and
//!   `--unit-graph` so that nothing is compiled): a declared target whose
//!   file is not copied, a stale Cargo.lock under `--locked` or a `--bin`
//!   that does not exist makes cargo refuse it;
//! - the build script this test was built with must run there with no cargo
//!   and an empty cargo home (what build.rs reads must be in the context, and
//!   it must not ask cargo or the network for anything).
//!
//! A later stage's `COPY --from=<build stage>` of a file under its `target/`
//! must name a binary the stage's cargo steps build, in the directory of the
//! profile they build with (`target/production/portcullis` for
//! `--profile production`).
//!
//! `PORTCULLIS_TEST_DOCKERFILE=FILE` checks another Dockerfile against this
//! checkout (e.g. an older revision's, to see the check fail).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

// ---------------------------------------------------------------------------
// Dockerfile parsing: the instructions of the stages that run cargo
// ---------------------------------------------------------------------------

/// One instruction of a Dockerfile, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if pending.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if pending.is_some() && trimmed.starts_with('#') {
            continue; // comment lines inside a continued instruction
        }
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                acc.push_str(head);
                acc.push(' ');
                pending = Some((start, acc));
            }
            None => {
                acc.push_str(trimmed);
                let (keyword, args) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
                out.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_string(),
                    line: start,
                });
            }
        }
    }
    assert!(
        pending.is_none(),
        "the Dockerfile ends inside a continued line"
    );
    out
}

/// The instructions of each stage (from its FROM to the next), by stage.
fn stages(text: &str) -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for ins in instructions(text) {
        if ins.keyword == "FROM" {
            stages.push(Vec::new());
        }
        match stages.last_mut() {
            Some(stage) => stage.push(ins),
            None => assert!(
                ins.keyword == "ARG",
                "line {}: {} before the first FROM",
                ins.line,
                ins.keyword
            ),
        }
    }
    stages
}

/// Shell words, with single and double quotes (no escapes, no expansion:
/// enough for the stub lines of a build stage).
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quote in {s:?}");
    if in_word {
        out.push(cur);
    }
    out
}

// ---------------------------------------------------------------------------
// .dockerignore
// ---------------------------------------------------------------------------

/// .dockerignore rules: patterns in the syntax of Go's filepath.Match plus
/// `**`, later rules win, `!` re-includes; a pattern that matches a
/// directory excludes everything under it.
struct DockerIgnore(Vec<(bool, Vec<String>)>);

impl DockerIgnore {
    fn load(context: &Path, dockerfile: &Path) -> Self {
        // BuildKit prefers <Dockerfile>.dockerignore next to the Dockerfile.
        let beside = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
        let file = if beside.exists() {
            beside
        } else {
            context.join(".dockerignore")
        };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (include, pattern) = match l.strip_prefix('!') {
                    Some(p) => (true, p.trim()),
                    None => (false, l),
                };
                let parts = pattern
                    .split('/')
                    .filter(|p| !p.is_empty() && *p != ".")
                    .map(str::to_string)
                    .collect();
                (include, parts)
            })
            .collect();
        DockerIgnore(rules)
    }

    /// Whether `relative` (to the context) is left out of the context.
    fn excludes(&self, relative: &Path) -> bool {
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut excluded = false;
        for (include, pattern) in &self.0 {
            // A pattern matches the path or one of its parent directories.
            let hit = (1..=parts.len()).any(|n| glob_parts(pattern, &parts[..n]));
            if hit {
                excluded = !include;
            }
        }
        excluded
    }
}

fn glob_parts(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| glob_parts(rest, &path[i..])),
        Some((p, rest)) => {
            !path.is_empty()
                && glob_name(p.as_bytes(), path[0].as_bytes())
                && glob_parts(rest, &path[1..])
        }
    }
}

fn glob_name(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_name(&p[1..], s) || (!s.is_empty() && glob_name(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob_name(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob_name(&p[1..], &s[1..]),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Assembling the context
// ---------------------------------------------------------------------------

/// The image's file system, rooted in a temporary directory.
struct Image {
    root: tempfile::TempDir,
    workdir: PathBuf,
}

impl Image {
    fn new() -> Self {
        Image {
            root: tempfile::tempdir().unwrap(),
            workdir: PathBuf::from("/"),
        }
    }

    /// An absolute image path, or one relative to WORKDIR, on the host.
    fn host(&self, image_path: &str) -> PathBuf {
        let p = self.workdir.join(image_path);
        let mut out = self.root.path().to_path_buf();
        for c in p.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::ParentDir => panic!("{image_path}: '..' in an image path"),
                _ => {}
            }
        }
        out
    }

    fn workdir_on_host(&self) -> PathBuf {
        self.host(".")
    }
}

/// COPY from the build context (no --from): sources relative to the
/// context, directories copied by content, the last argument the destination.
fn copy(image: &Image, context: &Path, ignore: &DockerIgnore, args: &str, line: usize) {
    let words = words(args);
    let (flags, rest): (Vec<_>, Vec<_>) = words.iter().partition(|w| w.starts_with("--"));
    assert!(
        flags
            .iter()
            .all(|f| f.starts_with("--chown") || f.starts_with("--chmod")),
        "line {line}: COPY {flags:?}: teach tests/e2e/container_build.rs this flag"
    );
    let (dest, sources) = rest.split_last().expect("COPY SRC... DEST");
    assert!(!sources.is_empty(), "line {line}: COPY without a source");
    let into_dir = dest.ends_with('/') || sources.len() > 1;
    for src in sources {
        assert!(
            !src.contains(['*', '?', '[']),
            "line {line}: COPY {src}: wildcards are not modelled here"
        );
        let relative = Path::new(src.trim_start_matches("./"));
        let from = context.join(relative);
        assert!(
            relative.as_os_str().is_empty() || !ignore.excludes(relative),
            "line {line}: COPY {src}: .dockerignore leaves it out of the context"
        );
        assert!(from.exists(), "line {line}: COPY {src}: not in the context");
        if from.is_dir() {
            copy_tree(&from, relative, &image.host(dest), ignore);
        } else {
            let to = if into_dir {
                image.host(dest).join(from.file_name().unwrap())
            } else {
                image.host(dest)
            };
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

fn copy_tree(from: &Path, relative: &Path, to: &Path, ignore: &DockerIgnore) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let rel = relative.join(entry.file_name());
        if ignore.excludes(&rel) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &rel, &target, ignore);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The commands a RUN line may use to stub files before a cargo step. Run
/// on the host in the image's WORKDIR, so nothing else is allowed.
const STUB_COMMANDS: &[&str] = &["mkdir", "echo", "printf", "touch", "true"];

// ---------------------------------------------------------------------------
// The checks of one cargo step
// ---------------------------------------------------------------------------

/// A `cargo build|check ...` segment of a RUN line.
struct CargoStep {
    line: usize,
    command: String,
    /// The words after `cargo`.
    args: Vec<String>,
    bins: Vec<String>,
}

/// Asks cargo to plan the step's own command in the assembled context
/// without compiling anything (`--unit-graph`), then runs build.rs there.
/// Returns where the step's binaries land in the image:
/// `<WORKDIR>/target/<profile directory>/<name>` (`debug` for the `dev`
/// profile, the profile's name for any other, as cargo lays them out).
///
/// Planning is what refuses a manifest whose declared targets have no file;
/// `cargo metadata`, even `--locked`, accepts such a manifest (it drops the
/// missing benches), so it cannot stand in for the build. `--unit-graph` is
/// unstable: RUSTC_BOOTSTRAP lets this test, and only it, use it on stable.
fn check_cargo_step(image: &Image, step: &CargoStep) -> Result<Vec<PathBuf>, String> {
    let dir = image.workdir_on_host();
    let what = format!("line {}: `{}`", step.line, step.command);
    if !dir.join("Cargo.toml").exists() {
        return Err(format!("{what}: no Cargo.toml in WORKDIR"));
    }
    let scratch = tempfile::tempdir().unwrap();
    // The dependencies are in this test's cargo home: offline is enough.
    let out = Command::new(cargo())
        .args(&step.args)
        .args(["--offline", "-Zunstable-options", "--unit-graph"])
        .current_dir(&dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", scratch.path())
        .output()
        .expect("run cargo");
    if !out.status.success() {
        return Err(format!(
            "{what}: cargo refuses the context the Dockerfile assembles:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let graph: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{what}: cargo's unit graph is not JSON: {e}"))?;
    let units = graph["units"].as_array().cloned().unwrap_or_default();
    let root_units: Vec<&serde_json::Value> = graph["roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| units.get(i.as_u64()? as usize))
        .collect();
    let roots: Vec<&str> = root_units
        .iter()
        .filter_map(|u| u["target"]["name"].as_str())
        .collect();
    for bin in &step.bins {
        if !roots.contains(&bin.as_str()) {
            return Err(format!("{what}: cargo would not build {bin} ({roots:?})"));
        }
    }
    if dir.join("build.rs").exists() {
        run_build_script(&dir).map_err(|e| format!("{what}: build.rs fails there: {e}"))?;
    }
    let binaries = root_units
        .iter()
        .filter(|u| {
            u["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|u| {
            let profile = u["profile"]["name"].as_str()?;
            let directory = if profile == "dev" { "debug" } else { profile };
            Some(
                image
                    .workdir
                    .join("target")
                    .join(directory)
                    .join(u["target"]["name"].as_str()?),
            )
        })
        .collect();
    Ok(binaries)
}

/// The compiled build script of this package: the newest one in this test's
/// own profile directory (the one cargo ran for this build).
fn build_script() -> PathBuf {
    // OUT_DIR = <profile>/build/portcullis-<hash>/out
    let build_dir = Path::new(env!("OUT_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf();
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&build_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("portcullis-"))
        .map(|e| e.path().join("build-script-build"))
        .filter(|p| p.exists())
        .map(|p| (p.metadata().unwrap().modified().unwrap(), p))
        .collect();
    candidates.sort();
    candidates
        .pop()
        .unwrap_or_else(|| panic!("no compiled build script under {}", build_dir.display()))
        .1
}

/// Runs the build script in `dir` as cargo would, except that there is no
/// cargo to call (`CARGO` is `false`) and the cargo home is empty.
fn run_build_script(dir: &Path) -> Result<(), String> {
    let out_dir = tempfile::tempdir().unwrap();
    let cargo_home = tempfile::tempdir().unwrap();
    let target = std::env::consts::ARCH.to_string() + "-unknown-linux-gnu";
    let out = Command::new(build_script())
        .current_dir(dir)
        .env("CARGO", "false")
        .env("CARGO_HOME", cargo_home.path())
        .env("CARGO_MANIFEST_DIR", dir)
        .env("CARGO_PKG_NAME", "portcullis")
        .env("OUT_DIR", out_dir.path())
        .env("TARGET", &target)
        .env("HOST", &target)
        .env("PROFILE", "release")
        .env("OPT_LEVEL", "3")
        .env("DEBUG", "false")
        .env("NUM_JOBS", "1")
        .output()
        .expect("run the build script");
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let descriptor = out_dir.path().join("reflection_descriptor.bin");
    if !descriptor.exists() {
        return Err("it wrote no reflection_descriptor.bin".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The whole Dockerfile
// ---------------------------------------------------------------------------

/// Checks every cargo step of every stage of `text` (a Dockerfile whose
/// context is `context`), and that every `COPY --from=STAGE` of a file under
/// that stage's `target/` copies a binary one of its cargo steps builds
/// there (a profile changed in the cargo step but not in the COPY would
/// copy nothing: the image build fails at the end); returns the steps
/// checked, or every problem.
fn check_dockerfile(text: &str, dockerfile: &Path, context: &Path) -> Result<usize, String> {
    let ignore = DockerIgnore::load(context, dockerfile);
    let mut checked = 0;
    let mut problems = Vec::new();
    // Per stage name (`FROM ... AS name`): its WORKDIR and what its cargo
    // steps build.
    let mut built: BTreeMap<String, (PathBuf, BTreeSet<PathBuf>)> = BTreeMap::new();
    for stage in stages(text) {
        check_copies_from_builds(&stage, &built, &mut problems);
        let last_cargo = stage
            .iter()
            .rposition(|i| i.keyword == "RUN" && words(&i.args).iter().any(|w| w == "cargo"));
        let Some(last_cargo) = last_cargo else {
            continue;
        };
        let mut image = Image::new();
        // Nothing after the last cargo step can change what cargo saw.
        for ins in &stage[..=last_cargo] {
            match ins.keyword.as_str() {
                "FROM" | "ENV" | "ARG" | "LABEL" | "USER" => {}
                "WORKDIR" => {
                    image.workdir = image.workdir.join(&ins.args);
                    std::fs::create_dir_all(image.workdir_on_host()).unwrap();
                }
                "COPY" | "ADD" if ins.args.contains("--from") => {
                    panic!(
                        "line {}: COPY --from before a cargo step is not modelled",
                        ins.line
                    )
                }
                "COPY" => copy(&image, context, &ignore, &ins.args, ins.line),
                "RUN" => {
                    for segment in ins.args.split("&&").map(str::trim) {
                        let w = words(segment);
                        if w.first().map(String::as_str) == Some("cargo") {
                            let step = CargoStep {
                                line: ins.line,
                                command: segment.to_string(),
                                args: w[1..].to_vec(),
                                bins: w
                                    .windows(2)
                                    .filter(|p| p[0] == "--bin")
                                    .map(|p| p[1].clone())
                                    .collect(),
                            };
                            assert!(
                                matches!(w.get(1).map(String::as_str), Some("build" | "check")),
                                "line {}: {segment}: only cargo build/check are modelled",
                                ins.line
                            );
                            match check_cargo_step(&image, &step) {
                                Ok(binaries) => {
                                    if let Some(name) = stage_name(&stage[0]) {
                                        let entry = built.entry(name).or_default();
                                        entry.0 = image.workdir.clone();
                                        entry.1.extend(binaries);
                                    }
                                }
                                Err(e) => problems.push(e),
                            }
                            checked += 1;
                        } else {
                            run_stub(&image, segment, ins.line);
                        }
                    }
                }
                other => panic!(
                    "line {}: {other} before a cargo step: teach tests/e2e/container_build.rs",
                    ins.line
                ),
            }
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems.join("\n\n"))
    }
}

/// The name a `FROM image AS name` instruction gives its stage.
fn stage_name(from: &Instruction) -> Option<String> {
    let w = words(&from.args);
    let at = w.iter().position(|a| a.eq_ignore_ascii_case("as"))?;
    w.get(at + 1).cloned()
}

/// Each `COPY --from=STAGE SRC... DEST` of `stage` whose source lies under
/// STAGE's `WORKDIR/target/` must name a binary STAGE's cargo steps build.
fn check_copies_from_builds(
    stage: &[Instruction],
    built: &BTreeMap<String, (PathBuf, BTreeSet<PathBuf>)>,
    problems: &mut Vec<String>,
) {
    for ins in stage.iter().filter(|i| i.keyword == "COPY") {
        let w = words(&ins.args);
        let Some(from) = w.iter().find_map(|a| a.strip_prefix("--from=")) else {
            continue;
        };
        let Some((workdir, binaries)) = built.get(from) else {
            continue;
        };
        let paths: Vec<&String> = w.iter().filter(|a| !a.starts_with("--")).collect();
        let Some((_, sources)) = paths.split_last() else {
            continue;
        };
        for src in sources {
            // A --from source is a path in that stage's file system, relative
            // to its root (not its WORKDIR).
            let src = Path::new("/").join(src.as_str());
            if src.starts_with(workdir.join("target")) && !binaries.contains(&src) {
                problems.push(format!(
                    "line {}: COPY --from={from} {}: the stage's cargo steps build {:?}, not this file: copy the binary from the profile directory the cargo step builds into",
                    ins.line,
                    src.display(),
                    binaries
                ));
            }
        }
    }
}

/// Runs one file-stubbing segment of a RUN line in the image's WORKDIR.
fn run_stub(image: &Image, segment: &str, line: usize) {
    let w = words(segment);
    let program = w.first().map(String::as_str).unwrap_or_default();
    assert!(
        STUB_COMMANDS.contains(&program),
        "line {line}: `{segment}` before a cargo step: only {STUB_COMMANDS:?} are modelled"
    );
    assert!(
        !w.iter().any(|a| a.starts_with('/') || a.contains("..")),
        "line {line}: `{segment}`: paths outside WORKDIR are not modelled"
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(segment)
        .current_dir(image.workdir_on_host())
        .status()
        .expect("run sh");
    assert!(status.success(), "line {line}: `{segment}` failed");
}

fn dockerfile() -> PathBuf {
    std::env::var_os("PORTCULLIS_TEST_DOCKERFILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("deploy/Dockerfile"))
}

#[test]
fn every_cargo_step_of_the_dockerfile_builds_from_what_it_copies() {
    let path = dockerfile();
    let text = std::fs::read_to_string(&path).unwrap();
    match check_dockerfile(&text, &path, &repo()) {
        Ok(steps) => assert!(steps >= 1, "{} runs no cargo step", path.display()),
        Err(problems) => panic!("{}:\n{problems}", path.display()),
    }
}

/// The caching step of deploy/Dockerfile before this test existed: it
/// stubbed src/ but not the declared bench targets, so cargo refused the
/// manifest and no image could be built.
#[test]
fn bench_targets_missing_from_the_caching_step_are_caught() {
    let old = "FROM rust:1.95-slim-bookworm AS build\n\
               WORKDIR /src\n\
               COPY Cargo.toml Cargo.lock build.rs ./\n\
               COPY proto proto\n\
               RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \\\n    \
               && cargo build --release --locked --bin portcullis\n";
    let err = check_dockerfile(old, &repo().join("deploy/Dockerfile"), &repo())
        .expect_err("the old caching step must fail");
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("can't find"), "{err}");
}

/// deploy/Dockerfile with its cargo steps switched to the `production`
/// profile but its runtime stage still copying `target/release/portcullis`:
/// cargo builds fine and the image build would fail only at that COPY.
#[test]
fn a_copy_of_the_binary_from_another_profile_directory_is_caught() {
    let path = repo().join("deploy/Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("--profile production"), "{}", path.display());
    let stale = text.replace("/src/target/production/", "/src/target/release/");
    assert_ne!(
        stale, text,
        "the Dockerfile copies no binary from target/production/"
    );
    let err = check_dockerfile(&stale, &path, &repo()).expect_err("the stale COPY must fail");
    assert!(
        err.contains("COPY --from=build /src/target/release/portcullis"),
        "{err}"
    );
    assert!(err.contains("/src/target/production/portcullis"), "{err}");
}

#[test]
fn dockerignore_rules_match_as_docker_does() {
    let ignore = DockerIgnore(
        ["target", ".git", "**/*.log", "docs/*.md", "!docs/keep.md"]
            .iter()
            .map(|l| match l.strip_prefix('!') {
                Some(p) => (true, p.split('/').map(str::to_string).collect()),
                None => (false, l.split('/').map(str::to_string).collect()),
            })
            .collect(),
    );
    for (path, excluded) in [
        ("target", true),
        ("target/release/portcullis", true),
        ("src/target.rs", false),
        (".git/HEAD", true),
        ("a/b/c.log", true),
        ("c.log", true),
        ("docs/x.md", true),
        ("docs/keep.md", false),
        ("docs/sub/x.md", false),
        ("src/main.rs", false),
    ] {
        assert_eq!(ignore.excludes(Path::new(path)), excluded, "{path}");
    }
    // The build context keeps what the build stage needs.
    let real = DockerIgnore::load(&repo(), &repo().join("deploy/Dockerfile"));
    let kept: BTreeSet<_> = [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "proto",
        "src",
        "benches",
        "policies",
    ]
    .into_iter()
    .filter(|p| !real.excludes(Path::new(p)))
    .collect();
    assert_eq!(kept.len(), 7, "{kept:?}");
}
