//! `ctl jobs apply -f FILE|DIR|-`: every source is read and parsed, then every job is checked
//! by the master (a dry-run PUT), and only when all of them pass is anything written. A job
//! whose stored spec equals the file is left alone (`unchanged`: no write, no new revision).

use super::CtlError;
use crate::model::JobSpec;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a job spec comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Stdin,
}

impl Source {
    pub fn label(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Stdin => "standard input".into(),
        }
    }
}

/// The file kinds a directory is searched for.
const JOB_FILE_EXTENSIONS: [&str; 4] = ["json", "toml", "yaml", "yml"];

/// The sources the `-f` arguments name, in order: a file as it is, `-` for standard input, a
/// directory's `*.json`, `*.toml`, `*.yaml` (and `*.yml`) files sorted by name (not its
/// subdirectories). A directory without any is an error, so is `-` twice.
pub fn collect(args: &[PathBuf]) -> Result<Vec<Source>, CtlError> {
    let mut out = Vec::new();
    for a in args {
        if a.as_os_str() == "-" {
            if out.contains(&Source::Stdin) {
                return Err(CtlError::Usage(
                    "-f - is given twice (standard input can be read once)".into(),
                ));
            }
            out.push(Source::Stdin);
        } else if a.is_dir() {
            let entries = std::fs::read_dir(a)
                .map_err(|e| CtlError::Usage(format!("cannot read the directory {}: {e}", a.display())))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| JOB_FILE_EXTENSIONS.contains(&e))
                })
                .collect();
            if files.is_empty() {
                return Err(CtlError::Usage(format!(
                    "{} has no *.json, *.toml or *.yaml files",
                    a.display()
                )));
            }
            files.sort();
            out.extend(files.into_iter().map(Source::File));
        } else {
            out.push(Source::File(a.clone()));
        }
    }
    Ok(out)
}

/// The format of a spec's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
    Yaml,
}

impl Format {
    /// By the file's extension; without a known one (standard input) JSON when the text starts
    /// with `{`, else TOML.
    pub fn of(path: Option<&Path>, text: &str) -> Format {
        match path.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("toml") => Format::Toml,
            Some("yaml" | "yml") => Format::Yaml,
            _ if text.trim_start().starts_with('{') => Format::Json,
            _ => Format::Toml,
        }
    }
}

/// Parses one job spec (one job per source).
pub fn parse(text: &str, format: Format) -> Result<JobSpec, String> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        Format::Toml => toml::from_str(text).map_err(|e| e.message().to_string()),
        Format::Yaml => serde_yaml_ng::from_str(text).map_err(|e| e.to_string()),
    }
}

/// Reads and parses every source; every failure is listed (each named by its source) and then
/// nothing is returned. A name given by two sources is a failure too.
pub fn read_all(sources: &[Source]) -> Result<Vec<(Source, JobSpec)>, CtlError> {
    let mut specs: Vec<(Source, JobSpec)> = Vec::new();
    let mut failures = Vec::new();
    for src in sources {
        let text = match src {
            Source::File(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read it: {e}")),
            Source::Stdin => {
                let mut t = String::new();
                std::io::stdin()
                    .read_to_string(&mut t)
                    .map(|_| t)
                    .map_err(|e| format!("cannot read it: {e}"))
            }
        };
        let path = match src {
            Source::File(p) => Some(p.as_path()),
            Source::Stdin => None,
        };
        match text.and_then(|t| parse(&t, Format::of(path, &t))) {
            Ok(spec) => {
                if let Some((first, _)) = specs.iter().find(|(_, s)| s.name == spec.name) {
                    failures.push(format!(
                        "{}: job {:?} is also in {}",
                        src.label(),
                        spec.name,
                        first.label()
                    ));
                } else {
                    specs.push((src.clone(), spec));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", src.label())),
        }
    }
    if failures.is_empty() {
        Ok(specs)
    } else {
        Err(nothing_applied(failures))
    }
}

/// The error of an apply that wrote nothing: each failure on its own line.
pub fn nothing_applied(failures: Vec<String>) -> CtlError {
    CtlError::Refused(format!(
        "nothing was applied: {} of the job files {} invalid:\n  {}",
        failures.len(),
        if failures.len() == 1 { "is" } else { "are" },
        failures.join("\n  ")
    ))
}

/// The specs in an order that writes every upstream before the jobs that run after it (the
/// master refuses an `after` naming a job it does not have); otherwise in the given order.
pub fn upstreams_first(specs: &[(Source, JobSpec)]) -> Vec<&(Source, JobSpec)> {
    let names: std::collections::BTreeSet<&str> = specs.iter().map(|(_, s)| s.name.as_str()).collect();
    let mut done: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(specs.len());
    while out.len() < specs.len() {
        let before = out.len();
        for item in specs {
            let s = &item.1;
            if done.contains(s.name.as_str()) {
                continue;
            }
            let ready = s
                .after
                .iter()
                .all(|u| !names.contains(u.job.as_str()) || done.contains(u.job.as_str()) || u.job == s.name);
            if ready {
                done.insert(&s.name);
                out.push(item);
            }
        }
        if out.len() == before {
            // a cycle among them (refused by `batch_cycles`): the rest as given
            out.extend(specs.iter().filter(|(_, s)| !done.contains(s.name.as_str())));
            break;
        }
    }
    out
}

/// The cycles the specs would close among themselves and the stored jobs, one message per
/// spec that closes one (the master checks each spec against what is stored; jobs applied
/// together can close a cycle only together).
pub(super) async fn batch_cycles(c: &super::Client, specs: &[(Source, JobSpec)]) -> Result<Vec<String>, CtlError> {
    let mut all: std::collections::BTreeMap<String, JobSpec> = std::collections::BTreeMap::new();
    for j in super::list_jobs(c, &super::JobFilter::default()).await? {
        let Some(name) = j["name"].as_str() else { continue };
        let mut spec = JobSpec::new(name, "@hourly", "true");
        spec.after = serde_json::from_value(j["after"].clone()).unwrap_or_default();
        all.insert(name.to_string(), spec);
    }
    for (_, s) in specs {
        all.insert(s.name.clone(), s.clone());
    }
    let mut out = Vec::new();
    for (src, s) in specs {
        if s.after.is_empty() {
            continue;
        }
        let mut others = all.clone();
        others.remove(&s.name);
        if let Err(e @ crate::master::deps::core::GraphError::Cycle(_)) = crate::master::deps::core::check(s, &others) {
            out.push(format!("{}: invalid job spec: after: {e}", src.label()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_gives_its_job_files_sorted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.toml", "a.json", "c.yaml", "notes.txt", "README.md"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.json")).unwrap();
        let one = dir.path().join("one.json");
        let got = collect(&[one.clone(), dir.path().to_path_buf(), "-".into()]).unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|s| match s {
                Source::File(p) => p.file_name().unwrap().to_string_lossy().into_owned(),
                Source::Stdin => "-".into(),
            })
            .collect();
        assert_eq!(names, ["one.json", "a.json", "b.toml", "c.yaml", "-"]);
    }

    #[test]
    fn a_directory_without_job_files_and_stdin_twice_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        let e = collect(&[dir.path().to_path_buf()]).unwrap_err().to_string();
        assert!(e.contains("no *.json, *.toml or *.yaml files"), "{e}");
        let e = collect(&["-".into(), "-".into()]).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn standard_input_is_json_when_it_starts_with_a_brace_and_toml_otherwise() {
        assert_eq!(Format::of(None, "  {\"name\": \"a\"}"), Format::Json);
        assert_eq!(Format::of(None, "name = \"a\""), Format::Toml);
        assert_eq!(Format::of(Some(Path::new("x.yml")), "{"), Format::Yaml);
        let toml = "name = \"a\"\nschedule = \"@hourly\"\ncommand = \"true\"\n";
        assert_eq!(parse(toml, Format::Toml).unwrap().name, "a");
        let yaml = "name: a\nschedule: '@hourly'\ncommand: 'true'\n";
        assert_eq!(parse(yaml, Format::Yaml).unwrap().schedule, "@hourly");
    }

    #[test]
    fn every_bad_file_is_named_and_then_nothing_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        let typo = dir.path().join("typo.toml");
        let twin = dir.path().join("twin.json");
        std::fs::write(&good, r#"{"name":"a","schedule":"@hourly","command":"true"}"#).unwrap();
        std::fs::write(&typo, "name = \"b\"\nschedule = \"@hourly\"\ncomand = \"true\"\n").unwrap();
        std::fs::write(&twin, r#"{"name":"a","schedule":"@daily","command":"true"}"#).unwrap();
        let e = read_all(&[
            Source::File(good.clone()),
            Source::File(typo.clone()),
            Source::File(twin.clone()),
            Source::File(dir.path().join("absent.json")),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("nothing was applied: 3 of the job files are invalid"),
            "{e}"
        );
        assert!(
            e.contains(&format!("{}: unknown field `comand`", typo.display())),
            "{e}"
        );
        assert!(
            e.contains(&format!("{}: job \"a\" is also in {}", twin.display(), good.display())),
            "{e}"
        );
        assert!(e.contains("absent.json: cannot read it"), "{e}");
        assert_eq!(read_all(&[Source::File(good)]).unwrap().len(), 1);
    }
}
