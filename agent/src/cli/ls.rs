//! `regent ls [--json]`: the stored credentials and the sources' tokens,
//! as a table or JSON (never their secrets).

use std::process::ExitCode;

use anyhow::Context;
use regent_shared::protocol::{EntryInfo, Request, Response};

use super::call;
use super::output::{human_duration, outln};
use crate::credentials::now_unix;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let entries = match call::call_agent(&Request::ListEntries)? {
        Response::Entries { entries } => entries,
        other => return Err(call::unexpected(&other)),
    };
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&entries).context("encoding the list")?
        );
    } else {
        print_entries(&entries);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_entries(entries: &[EntryInfo]) {
    if entries.is_empty() {
        outln!("no credentials stored (log in with `docker login` or `podman login`)");
        return;
    }
    let now = now_unix();
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                e.server_url.clone(),
                if e.username.is_empty() {
                    "-".into()
                } else {
                    e.username.clone()
                },
                e.source.clone(),
                format!("{} ago", human_duration((now - e.updated).max(0) as u64)),
                match e.expires {
                    None => "-".into(),
                    Some(t) if t > now => format!("in {}", human_duration((t - now) as u64)),
                    Some(t) => format!("expired {} ago", human_duration((now - t) as u64)),
                },
            ]
        })
        .collect();
    let header = ["REGISTRY", "USERNAME", "SOURCE", "UPDATED", "EXPIRES"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(header);
    for (row, e) in rows.iter().zip(entries) {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
        if let Some(err) = &e.last_error {
            outln!("    last error: {err}");
        }
    }
}
