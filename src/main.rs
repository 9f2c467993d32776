//! Command-line entry point (outside the pipeline client → framing → classify → route → pool →
//! server): parses arguments and hands over to the library.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgdecomp::classify::{to_json, to_text, Classifier, Dictionary, SchemaRules};

#[derive(Parser)]
#[command(name = "pgdecomp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Classify SQL (from the argument, or stdin when absent) and print the result.
    Classify {
        /// pgdecomp TOML config; its [classify] section names the dictionary and schema rules.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
        sql: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Text,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { config: _ } => {
            eprintln!("not yet");
            std::process::exit(2);
        }
        Command::Classify {
            config,
            format,
            sql,
        } => classify_cmd(config, format, sql),
    }
}

/// `pgdecomp classify`: unparsable SQL is an answer (kind "unknown"), not a failure.
fn classify_cmd(
    config: Option<PathBuf>,
    format: Format,
    sql: Option<String>,
) -> anyhow::Result<()> {
    let classifier = match config {
        Some(path) => load_classifier(&path)?,
        None => Classifier::gitlab_default(),
    };
    let sql = match sql {
        Some(sql) => sql,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading SQL from stdin")?;
            text
        }
    };
    let classification = classifier.classify(&sql);
    match format {
        Format::Json => println!("{}", to_json(&classification)),
        Format::Text => print!("{}", to_text(&classification)),
    }
    Ok(())
}

/// Reads the `[classify]` table of a pgdecomp config; paths are relative to the config's directory.
fn load_classifier(path: &Path) -> anyhow::Result<Classifier> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let section = match config.get("classify") {
        Some(toml::Value::Table(section)) => section.clone(),
        Some(_) => anyhow::bail!("{}: [classify] must be a table", path.display()),
        None => toml::Table::new(),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let read = |key: &str| -> anyhow::Result<Option<String>> {
        match section.get(key) {
            None => Ok(None),
            Some(toml::Value::String(file)) => {
                let file = base.join(file);
                std::fs::read_to_string(&file)
                    .map(Some)
                    .with_context(|| format!("reading classify.{key} {}", file.display()))
            }
            Some(_) => anyhow::bail!("classify.{key} must be a file name"),
        }
    };
    let dictionary = match read("dictionary")? {
        Some(text) => Dictionary::from_tsv(&text)?,
        None => Dictionary::gitlab_default(),
    };
    let rules = match read("schema_rules")? {
        Some(text) => SchemaRules::from_toml(&text)?,
        None => SchemaRules::gitlab_2022(),
    };
    let write_functions = match section.get("write_functions") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .context("classify.write_functions must be a list of function names")?,
        Some(_) => anyhow::bail!("classify.write_functions must be a list of function names"),
    };
    Ok(Classifier::new(dictionary, rules, &write_functions))
}
