//! `pipeline validate`: the file and every plugin's configuration and grants, no side effects.

use anyhow::Result;

use crate::cli::Context;
use crate::stages;
use crate::stages::Mode;

pub fn validate(cx: &Context, pipeline: &str) -> Result<()> {
    let p = stages::load(cx.engine()?, pipeline)?;
    let chain: Vec<String> = p
        .chain()
        .map(|(s, info)| format!("{} ({} {})", s.label(), info.name, info.version))
        .collect();
    println!("{}: ok", p.pipeline.file.display());
    println!("  stages: {}", chain.join(" → "));
    for n in &p.notifiers {
        let on: Vec<&str> = n.on.iter().map(|e| e.as_str()).collect();
        println!(
            "  {} ({} {}): told of {}",
            n.ready.label(),
            n.ready.info.name,
            n.ready.info.version,
            on.join(", ")
        );
    }
    if p.mode == Mode::Snapshot {
        println!("  snapshots are named like <time>_<type>_<action>_<name>_<id>.json");
        return Ok(());
    }
    println!(
        "  backups are named like {}",
        p.names.render(jiff::Timestamp::now())
    );
    match &p.pipeline.retention {
        Some(r) => println!(
            "  retention: {}",
            serde_json::to_string(r).unwrap_or_default()
        ),
        None => println!("  retention: none (nothing is ever pruned)"),
    }
    if let Some(signing) = crate::signing::describe(&p.pipeline)? {
        println!("  signing: {signing}");
    }
    Ok(())
}
