//! Every shell example in README.md and docs/*.md runs, so that the docs
//! cannot go stale: each command of a ```sh, ```bash or ```console fence
//! runs in the repository root against a Portcullis this test starts (one
//! per document, on free loopback ports, its forward-auth listener on), and
//! where the doc shows output
//! the output must match it.
//!
//! The convention for documented output (see [`Example::expected`]):
//!
//! - in a ```sh block, comment lines right after a command whose first line
//!   starts with `# => ` (continued by lines starting with `#  `);
//! - in a ```console block, the lines after a `$ command` line;
//! - a fence whose info string says `output` (```json output), after the
//!   shell fence whose last command prints it (prose may come between).
//!
//! Output is compared without whitespace (grpcurl pretty-prints what the
//! docs write on one line), with `...` matching anything, and with ids,
//! times and hex versions replaced by placeholders on both sides.
//!
//! Nothing is skipped silently: a command that cannot run here is listed in
//! [`NOT_RUNNABLE`] with the reason, every other command runs (an example
//! added to the docs that cannot run fails this test until it is listed),
//! and a fence that holds commands without saying it is shell fails too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support;

/// Commands that cannot run in this test, as written in the docs
/// (whitespace collapsed), with the reason.
const NOT_RUNNABLE: &[(&str, &str)] = &[
    (
        "cargo run --release -- serve",
        "the server itself: this test starts it (the binary Cargo built) on free ports",
    ),
    (
        "cargo run --release -- serve --config deploy/portcullis.yaml # audit trail in ./audit",
        "the server itself: this test starts it with a config that trusts the same test issuer, on free ports",
    ),
    (
        "scripts/demo.sh",
        "starts its own Envoy, model server and Portcullis; tests/e2e/deploy.rs runs it (demo_script_runs_to_the_end)",
    ),
    (
        "scripts/test.sh",
        "runs every test, this one included (about 13 minutes)",
    ),
    (
        "grpcurl -cacert ca.pem -cert envoy.pem -key envoy.key -servername portcullis.internal 127.0.0.1:50051 grpc.health.v1.Health/Check",
        "needs a TLS listener and certificate files; tests/e2e/tls_listener.rs runs the mTLS listener with generated ones",
    ),
    (
        "grpcurl -plaintext -H \"$AUTH\" -d '{\"id\":\"<decision id>\"}' 127.0.0.1:50052 portcullis.admin.v1.AuditService/Get",
        "needs the id of a recorded decision in place of <decision id>; tests/e2e/audit.rs calls Get with one",
    ),
    (
        "grpcurl -plaintext -H \"$AUTH\" -d '{\"kind\":\"decision\"}' 127.0.0.1:50052 portcullis.admin.v1.AuditService/Tail",
        "streams until Ctrl-C; tests/e2e/audit.rs tails with a bound",
    ),
    (
        "cargo run --release --bin portcullis-bench -- --baseline --json",
        "a benchmark: a release build and about 12 s of load on shared cores",
    ),
    (
        "cargo run --release --bin portcullis-bench -- --baseline --mix uncached",
        "a benchmark: a release build and about 12 s of load on shared cores",
    ),
    (
        "cargo run --release --bin portcullis-bench -- --baseline --rpc rls",
        "a benchmark: a release build and about 12 s of load on shared cores",
    ),
    (
        "cargo run --release --bin portcullis-bench -- --baseline --rpc rls --redis redis://127.0.0.1:6379/0",
        "a benchmark against a redis-server on its default port",
    ),
    (
        "cargo run --release --bin portcullis-bench -- --baseline --rpc forward-auth",
        "a benchmark: a release build and about 12 s of load on shared cores",
    ),
    (
        "cargo run --release --bin portcullis-bench -- --reload-policies 10000 --duration 8",
        "a benchmark: a release build and 10,000 policies reloaded under load",
    ),
    (
        "cargo run --release --bin portcullis-bench -- --rpc rls --baseline # RLS, in-process store",
        "a benchmark: a release build and about 12 s of load on shared cores",
    ),
    (
        "cargo run --release --bin portcullis-bench -- --rpc rls --baseline --redis redis://127.0.0.1:6379/0 # RLS, Redis store (a running redis-server)",
        "a benchmark against a redis-server on its default port",
    ),
    (
        "scripts/bench-envoy.sh",
        "a benchmark: a release build, Envoy and wrk under load",
    ),
    (
        "scripts/bench-envoy.sh # DURATION=10 CONNECTIONS=32 by default",
        "a benchmark: a release build, Envoy and wrk under load",
    ),
    (
        "scripts/bench-side-by-side.sh",
        "a benchmark: a release build and a dozen pinned load runs of 5 s",
    ),
    (
        "scripts/profile.sh rls",
        "a profile: a release build, perf sampling the server under 6 s of load",
    ),
    (
        "scripts/profile-stages.py target/profile/check target/profile/check@3000",
        "reads two profiles scripts/profile.sh wrote (perf under load); a fresh clone has none",
    ),
    (
        "scripts/instructions.sh check",
        "a profile: a release build, both servers under valgrind for 5,500 calls each",
    ),
    (
        "scripts/bench-memory.sh",
        "a benchmark: a release build and a million RLS calls",
    ),
    (
        "scripts/bench-header-streams.sh",
        "a benchmark: a release build and 50,000 held HTTP/2 streams, twice",
    ),
    (
        "cargo bench --bench decision",
        "criterion benchmarks: a release build of the benches and minutes of measurement",
    ),
    (
        "cargo test --test integration quota_burst # the burst and dead-Redis tests of issue 17",
        "runs tests of this suite (tests/integration/quota_burst.rs), which the suite runs itself; a nested cargo rebuilds everything under CI's settings",
    ),
    (
        "scripts/quota-fault-matrix.sh # the fault matrix (3 replicas x 2 topologies x 5 faults; about 2 minutes)",
        "a release build, then 34 Redis servers and 27 Portcullis processes over about 2 minutes on shared cores; its table is in docs/rate-limits.md",
    ),
    (
        "cargo bench --bench quota # one charge of three limits, each store",
        "criterion benchmarks: a release build of the benches and minutes of measurement",
    ),
    (
        "portcullis policy diff --from origin/main --to HEAD",
        "depends on the clone's git history (an origin/main ref); tests/e2e/cli.rs runs diff between revisions it commits",
    ),
    (
        "portcullis policy diff --from v41 --replay recorded-requests.jsonl --json",
        "names a tag and a file of recorded requests the reader has, not this repository",
    ),
    (
        "curl -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{\"features\": [\"the parcel arrived early\"], \"max_tokens\": 64}' -X POST http://127.0.0.1:10000/v1/models/sentiment/versions/v2:predict",
        "goes through Envoy on :10000 to a model server; scripts/demo.sh sends these requests through a real Envoy (tests/e2e/deploy.rs runs it)",
    ),
];

/// Variables the docs leave to the reader (`NAME=...`): what the test sets.
fn provided(name: &str) -> Option<String> {
    match name {
        // carol is an admin in the bundled policies; the test config trusts
        // the fixture issuer.
        "TOKEN" => Some(support::token("carol")),
        _ => None,
    }
}

/// Fence languages whose commands run.
const SHELL: &[&str] = &["sh", "bash", "console"];

/// Words a line of a non-shell fence may not start with: such a fence holds
/// commands and must say so (```sh) or say it is a transcript (```text).
const COMMAND_WORDS: &[&str] = &[
    "$ ",
    "curl ",
    "grpcurl ",
    "portcullis ",
    "cargo ",
    "scripts/",
    "docker ",
    "kubectl ",
];

/// One command of a shell fence.
#[derive(Debug, Clone)]
struct Example {
    /// `file:line` of its first line.
    at: String,
    /// As written, lines joined with newlines (continuations kept).
    text: String,
    /// The output the doc shows, if any.
    expected: Option<String>,
}

impl Example {
    /// The command with whitespace collapsed: how [`NOT_RUNNABLE`] names it.
    fn key(&self) -> String {
        self.text
            .split_whitespace()
            .filter(|w| *w != "\\")
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The documents whose examples run: README.md and docs/*.md.
fn documents() -> Vec<PathBuf> {
    let repo = support::repo();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo.join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    docs.insert(0, repo.join("README.md"));
    docs
}

/// Whether `text` ends inside a quote (so the command goes on), and the
/// byte offset where an unquoted `#` comment starts, if any.
fn scan(text: &str) -> (bool, Option<usize>) {
    let mut single = false;
    let mut double = false;
    let mut escaped = false;
    let mut previous = ' ';
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if single {
            single = c != '\'';
        } else if c == '\\' {
            escaped = true;
        } else if double {
            double = c != '"';
        } else if c == '\'' {
            single = true;
        } else if c == '"' {
            double = true;
        } else if c == '#' && previous.is_whitespace() {
            // A comment runs to the end of its line.
            let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
            if end == text.len() {
                return (false, Some(i));
            }
        }
        previous = c;
    }
    (single || double, None)
}

/// The examples of one document, and the problems found reading it.
fn examples(path: &Path) -> (Vec<Example>, Vec<String>) {
    let name = path
        .strip_prefix(support::repo())
        .unwrap()
        .display()
        .to_string();
    examples_named(&name, path)
}

/// The examples of the document at `path`, named `name` in messages.
fn examples_named(name: &str, path: &Path) -> (Vec<Example>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let Some(lang) = trimmed.strip_prefix("```") else {
            i += 1;
            continue;
        };
        let indent = lines[i].len() - trimmed.len();
        let lang = lang.trim().to_string();
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim_start().starts_with("```") {
            end += 1;
        }
        let body: Vec<(usize, &str)> = (start..end)
            .map(|n| {
                (
                    n + 1,
                    lines[n].get(indent..).unwrap_or(lines[n].trim_start()),
                )
            })
            .collect();
        i = end + 1;
        if lang.split_whitespace().any(|w| w == "output") {
            // A fence marked `output` (```json output) shows what the last
            // command before it prints.
            let text: String = body.iter().map(|(_, l)| format!("{l}\n")).collect();
            match found.last_mut() {
                Some(Example { expected: None, .. }) => {
                    found.last_mut().unwrap().expected = Some(text);
                }
                _ => problems.push(format!(
                    "{name}:{start}: a ```{lang} fence without a command before it \
                     that shows no output yet"
                )),
            }
        } else if lang == "console" {
            found.extend(console_block(name, &body));
        } else if SHELL.contains(&lang.as_str()) {
            found.extend(shell_block(name, &body));
        } else if lang != "text" {
            for (n, line) in &body {
                if COMMAND_WORDS
                    .iter()
                    .any(|w| line.trim_start().starts_with(w))
                {
                    problems.push(format!(
                        "{name}:{n}: a command in a ```{lang} fence: label the fence sh \
                         (and run it, or list it in NOT_RUNNABLE) or text (a transcript)"
                    ));
                }
            }
        }
    }
    (found, problems)
}

/// `$ command` lines, each followed by its output.
fn console_block(name: &str, body: &[(usize, &str)]) -> Vec<Example> {
    let mut found: Vec<Example> = Vec::new();
    for (n, line) in body {
        if let Some(command) = line.strip_prefix("$ ") {
            found.push(Example {
                at: format!("{name}:{n}"),
                text: command.to_string(),
                expected: None,
            });
        } else if let Some(last) = found.last_mut() {
            let out = last.expected.get_or_insert_with(String::new);
            out.push_str(line);
            out.push('\n');
        }
    }
    found
}

/// Commands (with `\` and open-quote continuations), `# => ` output.
fn shell_block(name: &str, body: &[(usize, &str)]) -> Vec<Example> {
    let mut found: Vec<Example> = Vec::new();
    // Whether the comment lines being read are the last command's output.
    let mut in_output = false;
    let mut k = 0;
    while k < body.len() {
        let (n, line) = body[k];
        k += 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            in_output = false;
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('#') {
            let just_after_command = k >= 2 && !body[k - 2].1.trim().starts_with('#');
            if let Some(out) = rest.strip_prefix(" => ") {
                if let (true, Some(last)) = (just_after_command, found.last_mut()) {
                    last.expected = Some(format!("{out}\n"));
                    in_output = true;
                }
            } else if in_output && rest.starts_with("  ") {
                let last = found.last_mut().unwrap();
                let out = last.expected.as_mut().unwrap();
                out.push_str(rest.trim());
                out.push('\n');
            } else {
                in_output = false;
            }
            continue;
        }
        in_output = false;
        let mut text = line.to_string();
        // A here-document runs to its delimiter line.
        if let Some(at) = line.find("<<") {
            let delimiter = line[at + 2..]
                .trim_start_matches('-')
                .trim()
                .trim_matches(|c| c == '\'' || c == '"')
                .to_string();
            while k < body.len() {
                text.push('\n');
                text.push_str(body[k].1);
                k += 1;
                if body[k - 1].1.trim() == delimiter {
                    break;
                }
            }
        }
        loop {
            let (open, _) = scan(&text);
            if !(open || text.trim_end().ends_with('\\')) || k >= body.len() {
                break;
            }
            text.push('\n');
            text.push_str(body[k].1);
            k += 1;
        }
        found.push(Example {
            at: format!("{name}:{n}"),
            text,
            expected: None,
        });
    }
    found
}

/// Replaces what changes from run to run with placeholders: UUIDs, RFC 3339
/// times, and runs of 12 or more hex digits (policy versions, hashes).
fn normalise(text: &str) -> String {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let chars: Vec<char> = compact.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 40)].iter().collect();
        if let Some(len) = uuid_len(&rest) {
            out.push_str("<id>");
            i += len;
        } else if let Some(len) = time_len(&rest) {
            out.push_str("<time>");
            i += len;
        } else if chars[i].is_ascii_hexdigit() && (i == 0 || !chars[i - 1].is_ascii_alphanumeric())
        {
            let len = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            let boundary = chars
                .get(i + len)
                .is_none_or(|c| !c.is_ascii_alphanumeric());
            if len >= 12 && boundary {
                out.push_str("<hex>");
                // A working tree that differs from the commit:
                // `<commit>-dirty.<hash>` is still a version.
                let dirty: String = chars[i + len..].iter().take(7).collect();
                if dirty == "-dirty." {
                    let tail = chars[i + len + 7..]
                        .iter()
                        .take_while(|c| c.is_ascii_hexdigit())
                        .count();
                    i += 7 + tail;
                }
            } else {
                out.extend(&chars[i..i + len]);
            }
            i += len;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn shape(text: &str, pattern: &str) -> bool {
    text.len() >= pattern.len()
        && text.chars().zip(pattern.chars()).all(|(c, p)| match p {
            'x' => c.is_ascii_hexdigit(),
            'd' => c.is_ascii_digit(),
            p => c == p,
        })
}

fn uuid_len(text: &str) -> Option<usize> {
    let pattern = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
    shape(text, pattern).then_some(pattern.len())
}

fn time_len(text: &str) -> Option<usize> {
    // 2026-11-26T10:00:00, then fractions and a zone.
    if !shape(text, "dddd-dd-ddTdd:dd:dd") {
        return None;
    }
    let tail = text[19..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'Z' | '+' | '-' | ':'))
        .count();
    Some(19 + tail)
}

/// Whether `actual` matches the documented `expected` (`...` matches
/// anything, whitespace and varying values ignored).
fn matches(actual: &str, expected: &str) -> bool {
    let actual = normalise(actual);
    let expected = normalise(expected);
    let pieces: Vec<&str> = expected.split("...").collect();
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if pieces.len() == 1 {
        return actual == expected;
    }
    if !actual.starts_with(first) || !actual[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &actual[first.len()..actual.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// The documented ports (`50051`, `50052`, `9090` and the forward-auth
/// listener's `9191` on loopback) replaced by the test server's, and
/// `cargo run --release --` by the built binary.
fn rewrite(text: &str, pdp: &mut support::Portcullis) -> String {
    let decision = pdp.addr().to_string();
    let admin = pdp.listener("admin").to_string();
    let http = pdp.listener("http").to_string();
    let forward_auth = pdp.listener("forward_auth").to_string();
    text.replace("127.0.0.1:50051", &decision)
        .replace("127.0.0.1:50052", &admin)
        .replace("127.0.0.1:9090", &http)
        .replace("127.0.0.1:9191", &forward_auth)
        .replace("cargo run --release -- ", "portcullis ")
}

/// `NAME=value` (a variable for the commands after it), and its value text.
fn assignment(text: &str) -> Option<(&str, &str)> {
    let (name, value) = text.split_once('=')?;
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    is_name.then_some((name, value))
}

/// Runs `command` with bash in the repository root, bounded; its exit
/// status, stdout and stderr.
fn run(command: &str, env: &BTreeMap<String, String>) -> (bool, String, String) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_portcullis"));
    let path = format!(
        "{}:{}:{}",
        support::repo().join(".tools/bin").display(),
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // grpcurl and the bundled tools must be there; fail saying how if not.
    support::tool("grpcurl");
    let out = Command::new("timeout")
        .args(["60", "bash", "-c", command])
        .current_dir(support::repo())
        .envs(env)
        .env("PATH", path)
        .output()
        .expect("run timeout bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shell_example_in_the_docs_runs_and_shows_its_output() {
    let mut all = Vec::new();
    let mut problems = Vec::new();
    for doc in documents() {
        let (found, read_problems) = examples(&doc);
        problems.extend(read_problems);
        all.push((doc, found));
    }
    let total: usize = all.iter().map(|(_, f)| f.len()).sum();
    assert!(
        total >= 40,
        "only {total} examples found: is the parser broken?"
    );

    let mut listed_seen = std::collections::HashSet::new();
    let mut ran = 0;
    let mut compared = 0;
    let mut assigned = 0;
    for (_, found) in &all {
        // One server per document: counters (quotas, audit) start afresh.
        let mut pdp: Option<support::Portcullis> = None;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for example in found {
            let key = example.key();
            if let Some((listed, _)) = NOT_RUNNABLE.iter().find(|(c, _)| *c == key) {
                listed_seen.insert(*listed);
                continue;
            }
            let pdp = pdp.get_or_insert_with(|| {
                support::Portcullis::start(&["--forward-auth-listen", "127.0.0.1:0"])
            });
            let text = rewrite(&example.text, pdp);
            if let Some((name, value)) = assignment(&text) {
                let value = match scan(value).1 {
                    Some(comment) => value[..comment].trim(),
                    None => value.trim(),
                };
                let value = if value == "..." {
                    match provided(name) {
                        Some(v) => v,
                        None => {
                            problems.push(format!(
                                "{}: {name}=... is left to the reader and this test does not \
                                 know what to set it to (add it to `provided`)",
                                example.at
                            ));
                            continue;
                        }
                    }
                } else {
                    let (ok, stdout, stderr) =
                        run(&format!("{name}={value}; printf %s \"${name}\""), &env);
                    assert!(ok, "{}: {text}\n{stderr}", example.at);
                    stdout
                };
                env.insert(name.to_string(), value);
                assigned += 1;
                continue;
            }
            ran += 1;
            let (ok, stdout, stderr) = run(&text, &env);
            if !ok {
                problems.push(format!(
                    "{}: failed (list it in NOT_RUNNABLE with the reason if it cannot run \
                     here):\n{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                    example.at, example.text
                ));
                continue;
            }
            if let Some(expected) = &example.expected {
                compared += 1;
                if !matches(&stdout, expected) {
                    problems.push(format!(
                        "{}: the output differs from the doc's\ncommand:\n{}\ndocumented:\n\
                         {expected}\nactual:\n{stdout}\n(compared as\n{}\n{})",
                        example.at,
                        example.text,
                        normalise(expected),
                        normalise(&stdout)
                    ));
                }
            }
        }
    }
    for (listed, _) in NOT_RUNNABLE {
        if !listed_seen.contains(listed) {
            problems.push(format!(
                "NOT_RUNNABLE lists `{listed}`, which no doc shows any more: remove it"
            ));
        }
    }
    eprintln!(
        "docs examples: {total} commands: {ran} ran ({compared} with documented output), \
         {assigned} set a variable, {} listed as not runnable ({} entries)",
        total - ran - assigned,
        NOT_RUNNABLE.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn documented_output_matches_with_ellipses_and_placeholders() {
    let actual = "{\n  \"id\": \"019ab3c4-1234-7abc-8def-0123456789ab\",\n  \"version\": \"3f2c1a9b8e7d\",\n  \"at\": \"2026-11-26T10:00:00.123Z\",\n  \"n\": 49\n}\n";
    assert!(matches(
        actual,
        "{\"id\":\"0190aaaa-0000-7000-8000-000000000000\",...,\"n\":49}"
    ));
    assert!(matches(actual, "{...\"version\":\"a805bd3a805b\"...}"));
    assert!(!matches(actual, "{...\"n\":48}"));
    assert!(!matches(actual, "{\"id\":\"x\"}"));
}

#[test]
fn shell_blocks_split_into_commands_and_outputs() {
    let body = [
        (1, "# a comment"),
        (2, "grpcurl -d '{\"a\":"),
        (3, "  1}' host \\"),
        (4, "  svc/Method"),
        (5, "# => {\"ok\":true,"),
        (6, "#    \"n\":1}"),
        (7, "# another comment"),
        (8, "curl -s http://x/y   # why"),
        (9, "# not output: not right after the command"),
    ];
    let found = shell_block("doc.md", &body);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].at, "doc.md:2");
    assert_eq!(found[0].key(), "grpcurl -d '{\"a\": 1}' host svc/Method");
    assert_eq!(
        found[0].expected.as_deref(),
        Some("{\"ok\":true,\n\"n\":1}\n")
    );
    assert_eq!(found[1].expected, None);
}

#[test]
fn here_documents_and_output_fences_belong_to_their_command() {
    let body = [
        (1, "portcullis check --request /dev/stdin <<'EOF'"),
        (2, "{ \"method\": \"GET\","),
        (3, "  \"path\": \"/\" }"),
        (4, "EOF"),
    ];
    let found = shell_block("doc.md", &body);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].text.ends_with("EOF"), "{found:?}");

    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.md");
    let text = "```sh\nportcullis check --request x.json\n```\n\nThe output:\n\n```json output\n{\"decision\": \"allow\"}\n```\n";
    std::fs::write(&doc, text).unwrap();
    let (found, problems) = examples_named("doc.md", &doc);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        found[0].expected.as_deref(),
        Some("{\"decision\": \"allow\"}\n")
    );
}
