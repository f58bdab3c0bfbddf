//! Reading settings the way both binaries do: secrets from files, and `config check`.
//!
//! Every secret setting (one whose value clap hides: `hide_env_values`) also reads
//! `<NAME>_FILE`, the path of a file holding the value (trimmed), the way Kubernetes and Docker
//! mount secrets. Setting both is an error. `config check` prints the effective settings with
//! the secrets redacted and lists every error, not only the first.

use std::{ffi::OsString, process::ExitCode};

/// The variable that names a secret's file.
pub fn file_variable(name: &str) -> String {
    format!("{name}_FILE")
}

/// The secret settings of `command`: (variable, long flag).
pub fn secrets(command: &clap::Command) -> Vec<(String, String)> {
    command
        .get_arguments()
        .filter(|arg| arg.is_hide_env_values_set())
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            Some((env, arg.get_long()?.to_owned()))
        })
        .collect()
}

/// `args` with every secret given through `<NAME>_FILE` (read through `env`) added as its
/// flag, from the file. Errors name the variables, never a value, and list every problem.
pub fn with_secret_files(
    command: &clap::Command,
    mut args: Vec<OsString>,
    env: &impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, Vec<String>> {
    let mut errors = Vec::new();
    for (name, flag) in secrets(command) {
        let file_var = file_variable(&name);
        let Some(path) = env(&file_var) else {
            continue;
        };
        if env(&name).is_some() {
            errors.push(format!("{name} and {file_var} are both set: set one"));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(value) if value.trim().is_empty() => errors.push(format!(
                "{file_var}: {} is empty",
                std::path::Path::new(&path).display()
            )),
            Ok(value) => args.push(format!("--{flag}={}", value.trim()).into()),
            Err(e) => errors.push(format!(
                "{file_var}: cannot read {}: {e}",
                std::path::Path::new(&path).display()
            )),
        }
    }
    match errors.is_empty() {
        true => Ok(args),
        false => Err(errors),
    }
}

/// Parses `C` from the process's arguments and environment, secrets files included; on an
/// error, prints it the way clap does and exits with clap's usage status.
pub fn parse<C: clap::Parser>(args: Vec<OsString>) -> C {
    let env = |name: &str| std::env::var_os(name);
    match with_secret_files(&C::command(), args, &env) {
        Ok(args) => C::parse_from(args),
        Err(errors) => {
            for error in errors {
                eprintln!("error: {error}");
            }
            std::process::exit(2);
        }
    }
}

/// Parses an operator tool (`T`, a subcommand enum) from the process's arguments, with the
/// tool's secrets read from their `<NAME>_FILE` too.
pub fn parse_tool<T: clap::Parser>() -> T {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let command = T::command();
    let tool = args
        .get(1)
        .and_then(|a| a.to_str())
        .and_then(|name| command.find_subcommand(name));
    let Some(tool) = tool else {
        return T::parse_from(args);
    };
    let env = |name: &str| std::env::var_os(name);
    match with_secret_files(tool, Vec::new(), &env) {
        Ok(flags) => {
            // The tool's own flags go right after its name.
            let rest = args.split_off(2);
            args.extend(flags);
            args.extend(rest);
            T::parse_from(args)
        }
        Err(errors) => {
            for error in errors {
                eprintln!("error: {error}");
            }
            std::process::exit(2);
        }
    }
}

/// `config <action>` of both binaries.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigAction {
    /// Print the effective settings (secrets redacted) and every error; exit 1 on any error.
    Check,
}

/// What `config check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Each setting as the process would run with it: `NAME=value`, secrets redacted.
    pub effective: Vec<String>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// `config check` for the settings `C`, read through `env`: every setting checked on its own
/// (so every bad value is listed), then the whole, then `validate`'s rules on the parsed
/// settings (errors, warnings).
/// `args` is the command line the process would start with (the program name, and any
/// defaults it fills in itself as flags).
pub fn check<C: clap::Parser>(
    args: Vec<OsString>,
    env: &impl Fn(&str) -> Option<OsString>,
    validate: impl FnOnce(&C) -> (Vec<String>, Vec<String>),
) -> Report {
    let command = C::command();
    let mut report = Report::default();
    let given = args.clone();
    let args = match with_secret_files(&command, args, env) {
        Ok(args) => args,
        Err(errors) => {
            report.errors = errors;
            given.clone()
        }
    };
    for arg in command.get_arguments() {
        let Some(name) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        let from_file = env(&file_variable(name)).is_some();
        let value = env(name);
        let secret = arg.is_hide_env_values_set();
        let flag = arg.get_long().map(|long| format!("--{long}"));
        let filled_in = flag.and_then(|flag| {
            let at = given.iter().position(|a| *a == *flag)?;
            given.get(at + 1).cloned()
        });
        let shown = match (&value, from_file, filled_in) {
            (_, true, _) => Some("<redacted, from file>".to_owned()),
            (Some(_), false, _) if secret => Some("<redacted>".to_owned()),
            (Some(v), false, _) => Some(v.to_string_lossy().into_owned()),
            (None, false, Some(_)) if secret => Some("<redacted> (filled in)".to_owned()),
            (None, false, Some(v)) => Some(format!("{} (filled in)", v.to_string_lossy())),
            (None, false, None) => arg
                .get_default_values()
                .first()
                .map(|d| format!("{} (default)", d.to_string_lossy())),
        };
        if arg.is_hide_set() && value.is_none() {
            continue;
        }
        report.effective.push(format!(
            "{name}={}",
            shown.unwrap_or_else(|| "(unset)".into())
        ));
        if let (Some(value), Some(long)) = (value, arg.get_long()) {
            // This setting alone, so each bad value is reported, not only the first.
            let alone = clap::Command::new("setting")
                .no_binary_name(true)
                .arg(arg.clone().required(false));
            let mut flag = OsString::from(format!("--{long}="));
            flag.push(value);
            if let Err(e) = alone.try_get_matches_from([flag]) {
                report.errors.push(clap_message(&e, name));
            }
        }
    }
    if !report.errors.is_empty() {
        return report;
    }
    let mut full = args;
    // The environment as `env` sees it, given as flags: a check reads what it is handed.
    for arg in command.get_arguments() {
        let (Some(name), Some(flag)) = (arg.get_env().and_then(|e| e.to_str()), arg.get_long())
        else {
            continue;
        };
        if let Some(value) = env(name) {
            let mut flag_value = OsString::from(format!("--{flag}="));
            flag_value.push(value);
            full.push(flag_value);
        }
    }
    match C::try_parse_from(full) {
        Err(e) => report.errors.push(clap_message(&e, "the settings")),
        Ok(config) => {
            let (errors, warnings) = validate(&config);
            report.errors.extend(errors);
            report.warnings.extend(warnings);
        }
    }
    report
}

/// A clap error's message on one line, without its `error: ` prefix, naming `name` when it does not.
fn clap_message(error: &clap::Error, name: &str) -> String {
    let text = error.to_string();
    // The message, without clap's usage and help hints, on one line.
    let message = text.split("\n\n").next().unwrap_or_default();
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = line.trim_start_matches("error: ").to_owned();
    match line.contains(name) {
        true => line,
        false => format!("{name}: {line}"),
    }
}

/// Prints `report` (settings on stdout, problems on stderr) and gives the exit status: failure
/// when there is any error.
pub fn print(report: &Report) -> ExitCode {
    for line in &report.effective {
        println!("{line}");
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    if report.errors.is_empty() {
        eprintln!("the settings are valid");
        return ExitCode::SUCCESS;
    }
    eprintln!("{} error(s):", report.errors.len());
    for error in &report.errors {
        eprintln!("error: {error}");
    }
    ExitCode::FAILURE
}

/// Collects the errors of several checks that each stop at their first.
pub fn errors(checks: impl IntoIterator<Item = Result<(), String>>) -> Vec<String> {
    checks.into_iter().filter_map(Result::err).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(clap::Parser, Debug)]
    struct Settings {
        #[arg(long, env = "TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, env = "SIZE", default_value_t = 3)]
        size: u8,
        #[arg(long, env = "COUNT")]
        count: u32,
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| map.get(name).map(OsString::from)
    }

    #[test]
    fn a_secret_is_read_from_its_file_trimmed_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("otp-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        let env = env_of(&[("TOKEN_FILE", file.to_str().unwrap()), ("COUNT", "2")]);
        let report = check::<Settings>(vec!["test".into()], &env, |s| {
            assert_eq!(s.token.as_deref(), Some("s3cret-value"));
            (vec![], vec![])
        });
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let shown = report.effective.join("\n");
        assert!(shown.contains("TOKEN=<redacted, from file>"), "{shown}");
        assert!(shown.contains("SIZE=3 (default)") && shown.contains("COUNT=2"));
        assert!(!shown.contains("s3cret"));

        let both = env_of(&[("TOKEN", "x"), ("TOKEN_FILE", file.to_str().unwrap())]);
        let errors = with_secret_files(
            &<Settings as clap::CommandFactory>::command(),
            vec![],
            &both,
        );
        assert_eq!(
            errors.unwrap_err(),
            ["TOKEN and TOKEN_FILE are both set: set one"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_bad_value_is_listed() {
        let env = env_of(&[
            ("SIZE", "300"),
            ("COUNT", "many"),
            ("TOKEN_FILE", "/nonexistent"),
        ]);
        let report = check::<Settings>(vec!["test".into()], &env, |_| unreachable!("not parsed"));
        let errors = report.errors.join("\n");
        assert_eq!(report.errors.len(), 3, "{errors}");
        for name in ["SIZE", "COUNT", "TOKEN_FILE"] {
            assert!(errors.contains(name), "{errors}");
        }
    }

    #[test]
    fn the_rules_on_the_whole_are_checked_once_each_value_parses() {
        let env = env_of(&[("COUNT", "1")]);
        let report = check::<Settings>(vec!["test".into()], &env, |s| {
            (
                vec![format!("COUNT {} is too small", s.count)],
                vec!["careful".into()],
            )
        });
        assert_eq!(report.errors, ["COUNT 1 is too small"]);
        assert_eq!(report.warnings, ["careful"]);
        let missing = check::<Settings>(vec!["test".into()], &env_of(&[]), |_| unreachable!());
        assert_eq!(missing.errors.len(), 1, "{:?}", missing.errors);
        assert!(missing.errors[0].contains("COUNT"), "{:?}", missing.errors);
    }
}
