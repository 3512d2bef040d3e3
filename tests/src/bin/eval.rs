//! The evaluation harness (method and numbers in EVALUATION.md).
//!
//! ```text
//! eval [--seeds N] [--first-seed S] [--family NAME]... [--out DIR] [--keep] [--pipeline FILE]
//!     every family (or those named) over seeds S..S+N (default 0..20) through the embedded default pipeline
//!     (or FILE's, to try a setting without a rebuild); the scorecard in Markdown on stdout, progress on
//!     stderr; with --out, DIR/scorecard.json and DIR/scorecard.md (and with --keep the scenario files and
//!     their events under DIR/scenarios)
//! eval real [--input PATH] [--layout collector|in-order] [--group N] [--limit-gib X] [--out DIR]
//!           [--pipeline FILE]
//!     the GPU-memory trace (default ../shared/data/genai-gpu-memory/pod_gpu_memory_used_bytes_anon.tar.gz)
//!     as Collector-file OTLP metrics (N pods per line, default 8, two scrapes a line) through the default
//!     pipeline (or FILE's); findings per pod-hour, late values, and every finding
//! eval list
//!     the families
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use memdrift::config::Pipeline;
use memdrift_e2e::eval::families::{self, FAMILIES};
use memdrift_e2e::eval::real::{self, Layout};
use memdrift_e2e::eval::scorecard::{run_family, Scorecard};
use memdrift_e2e::eval::GIB;

struct Synthetic {
    seeds: u64,
    first_seed: u64,
    families: Vec<String>,
    out: Option<PathBuf>,
    keep: bool,
    pipeline: Option<PathBuf>,
}

struct Real {
    input: PathBuf,
    layout: Layout,
    limit: Option<f64>,
    out: Option<PathBuf>,
    pipeline: Option<PathBuf>,
}

enum Command {
    Synthetic(Synthetic),
    Real(Real),
    List,
}

fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T> {
    let v = v.with_context(|| format!("{flag} needs a value"))?;
    v.parse()
        .map_err(|_| anyhow::anyhow!("{flag}: cannot read `{v}`"))
}

fn parse(args: Vec<String>) -> Result<Command> {
    let mut args = args.into_iter().peekable();
    match args.peek().map(String::as_str) {
        Some("list") => return Ok(Command::List),
        Some("real") => {
            args.next();
            let mut r = Real {
                input: real::default_input(),
                layout: Layout::Collector { group: 8 },
                limit: None,
                out: None,
                pipeline: None,
            };
            let mut group = 8;
            let mut in_order = false;
            while let Some(flag) = args.next() {
                match flag.as_str() {
                    "--input" => r.input = value(&flag, args.next())?,
                    "--out" => r.out = Some(value(&flag, args.next())?),
                    "--pipeline" => r.pipeline = Some(value(&flag, args.next())?),
                    "--group" => group = value(&flag, args.next())?,
                    "--limit-gib" => r.limit = Some(value::<f64>(&flag, args.next())? * GIB),
                    "--layout" => match args.next().as_deref() {
                        Some("collector") => in_order = false,
                        Some("in-order") => in_order = true,
                        other => bail!("--layout: collector or in-order, not {other:?}"),
                    },
                    _ => bail!("unknown argument `{flag}` (see the usage in the source's header)"),
                }
            }
            r.layout = if in_order {
                Layout::InOrder
            } else {
                Layout::Collector { group }
            };
            return Ok(Command::Real(r));
        }
        _ => {}
    }
    let mut s = Synthetic {
        seeds: 20,
        first_seed: 0,
        families: Vec::new(),
        out: None,
        keep: false,
        pipeline: None,
    };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seeds" => s.seeds = value(&flag, args.next())?,
            "--first-seed" => s.first_seed = value(&flag, args.next())?,
            "--family" => {
                let name: String = value(&flag, args.next())?;
                if families::find(&name).is_none() {
                    let names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
                    bail!("no family `{name}`; there are: {}", names.join(", "));
                }
                s.families.push(name);
            }
            "--out" => s.out = Some(value(&flag, args.next())?),
            "--keep" => s.keep = true,
            "--pipeline" => s.pipeline = Some(value(&flag, args.next())?),
            _ => bail!("unknown argument `{flag}` (see the usage in the source's header)"),
        }
    }
    Ok(Command::Synthetic(s))
}

/// FILE's pipeline, or the embedded default; and how the scorecard names it.
fn pipeline(file: &Option<PathBuf>) -> Result<(Pipeline, String)> {
    match file {
        Some(path) => Pipeline::load(path)
            .map(|p| (p, path.display().to_string()))
            .map_err(|e| anyhow::anyhow!("--pipeline: {e}")),
        None => Pipeline::default_pipeline()
            .map(|p| (p, "pipelines/default.yaml (embedded)".into()))
            .map_err(|e| anyhow::anyhow!("the default pipeline: {e}")),
    }
}

fn work_dir(out: &Option<PathBuf>, keep: bool, what: &str) -> PathBuf {
    match out {
        Some(dir) if keep => dir.join(what),
        _ => std::env::temp_dir().join(format!("memdrift-eval-{what}-{}", std::process::id())),
    }
}

fn synthetic(s: Synthetic, command: String) -> Result<()> {
    let (pipeline, pipeline_name) = pipeline(&s.pipeline)?;
    let dir = work_dir(&s.out, s.keep, "scenarios");
    let chosen: Vec<_> = FAMILIES
        .iter()
        .filter(|f| s.families.is_empty() || s.families.iter().any(|n| n == f.name))
        .collect();
    let total = chosen.len() as u64 * s.seeds;
    let started = Instant::now();
    let mut done = 0u64;
    let mut scores = Vec::new();
    for family in chosen {
        let score = run_family(
            family,
            s.first_seed..s.first_seed + s.seeds,
            &pipeline,
            &dir,
            s.keep,
            &mut |r| {
                done += 1;
                eprintln!(
                    "[{done}/{total} {:.0} s] {}#{}: {:.0} instance-h, {} lines, {} late values, {} opens \
                     ({} false), {:.2} s",
                    started.elapsed().as_secs_f64(),
                    r.family,
                    r.seed,
                    r.instance_hours,
                    r.lines,
                    r.late_values,
                    r.memdrift.opens,
                    r.memdrift.false_alarms,
                    r.seconds
                );
            },
        )?;
        scores.push(score);
    }
    if !s.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let card = Scorecard {
        command,
        pipeline: pipeline_name,
        families: scores,
    };
    let table = card.markdown();
    let details = card.details(5);
    println!("{table}");
    if !details.is_empty() {
        println!("Examples (first few per family):\n\n{details}");
    }
    if let Some(out) = &s.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let json = serde_json::to_string_pretty(&card)?;
        std::fs::write(out.join("scorecard.json"), json)?;
        std::fs::write(out.join("scorecard.md"), format!("{table}\n{details}"))?;
        eprintln!("wrote {}", out.join("scorecard.json").display());
    }
    Ok(())
}

fn real_trace(r: Real) -> Result<()> {
    if !r.input.exists() {
        bail!(
            "{} is not there (the trace lives in ../shared/data/genai-gpu-memory beside the repository)",
            r.input.display()
        );
    }
    let (pipeline, _) = pipeline(&r.pipeline)?;
    let keep = r.out.is_some();
    let dir = work_dir(&r.out, keep, "real");
    eprintln!("converting and replaying {}", r.input.display());
    let report = real::run_real(&r.input, r.layout, r.limit, &pipeline, &dir)?;
    let md = report.markdown();
    println!("{md}");
    if let Some(out) = &r.out {
        std::fs::write(
            out.join("real.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(out.join("real.md"), &md)?;
        eprintln!(
            "wrote {} (and the converted lines under {})",
            out.join("real.json").display(),
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("eval {}", args.join(" ")).trim().to_string();
    let result = parse(args).and_then(|c| match c {
        Command::List => {
            for f in FAMILIES {
                println!(
                    "{:<18} {}{}",
                    f.name,
                    f.about,
                    if f.calm { " (calm)" } else { "" }
                );
            }
            Ok(())
        }
        Command::Synthetic(s) => synthetic(s, command),
        Command::Real(r) => real_trace(r),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eval: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_pipeline_file_replaces_the_embedded_default_and_is_named() {
        let file = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../pipelines/canary.yaml"
        ));
        let Ok(Command::Synthetic(s)) = parse(args(&[
            "--pipeline",
            file.to_str().unwrap(),
            "--seeds",
            "2",
        ])) else {
            panic!("a synthetic run");
        };
        assert_eq!((s.pipeline.as_ref(), s.seeds), (Some(&file), 2));
        let (_, name) = pipeline(&s.pipeline).expect("canary.yaml loads");
        assert_eq!(name, file.display().to_string());
        let (_, name) = pipeline(&None).expect("the embedded default loads");
        assert_eq!(name, "pipelines/default.yaml (embedded)");

        let Ok(Command::Real(r)) = parse(args(&["real", "--pipeline", "x.yaml"])) else {
            panic!("a real-trace run");
        };
        assert_eq!(r.pipeline, Some(PathBuf::from("x.yaml")));
        let err = pipeline(&r.pipeline).expect_err("x.yaml is not there");
        assert!(err.to_string().starts_with("--pipeline: "), "{err}");
        assert!(parse(args(&["--pipeline"])).is_err(), "a value is needed");
    }
}
