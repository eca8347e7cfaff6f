//! `bindery certify`: every linked module against its class's suite.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bindery::{Config, Kernel, ModuleDescriptor, ModuleList, Registry};
use bindery_classes::class;
use bindery_classes::driver::DriverHandle;
use bindery_classes::parser::ParserHandle;
use bindery_conformance::redis::RedisServer;
use bindery_conformance::{Verdict, dispatcher, driver, parser, route, run_all, terminal, worker};
use serde::Serialize;

/// Where certified driver and parser instances run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    /// In this process.
    #[default]
    None,
    /// Each in a host process, through the proxy.
    Process,
}

/// One module's results.
#[derive(Serialize)]
pub struct Report {
    /// `class.name`.
    pub module: String,
    /// The crate that declares it.
    #[serde(rename = "crate")]
    pub krate: &'static str,
    /// The suite it was held to, or why none.
    pub suite: String,
    /// A verdict per case.
    pub cases: Vec<Verdict>,
}

impl Report {
    fn failed(&self) -> usize {
        self.cases.iter().filter(|v| v.failure.is_some()).count()
    }
}

/// A scratch directory for one module's certification, removed after.
struct Scratch(PathBuf);

impl Scratch {
    fn new(module: &ModuleDescriptor) -> Scratch {
        Self::named(format!("{}-{}", std::process::id(), module.id()))
    }

    /// A scratch directory for one case of `module`.
    fn for_case(module: &ModuleDescriptor, case: &str) -> Scratch {
        Self::named(format!("{}-{}-{case}", std::process::id(), module.id()))
    }

    fn named(name: String) -> Scratch {
        let dir = std::env::temp_dir().join(format!("bindery-certify-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An instance of `module` with its certification configuration, alone in
/// a kernel (not started), bound at `key` if given. `{scratch}` in the
/// configuration is the case's scratch directory, `{redis}` the URL of the
/// Redis started for the module (see [`Services`]).
fn instance(
    module: &'static ModuleDescriptor,
    key: Option<&str>,
    scratch: &Path,
    services: &Services,
) -> Result<Kernel, String> {
    let registry = Registry::of(&[module]).map_err(|e| e.to_string())?;
    let bind = key.map_or(String::new(), |k| format!("bind = [\"{k}\"]\n"));
    let mut section = module
        .certify_config
        .replace("{scratch}", &scratch.display().to_string());
    if section.contains("{redis}") {
        let url = services.redis.as_ref().map_err(Clone::clone)?.url();
        section = section.replace("{redis}", &url);
    }
    let isolated = match services.isolation {
        IsolationArg::Process => "isolation = \"process\"\nrestart = \"never\"\n",
        IsolationArg::None => "",
    };
    let text = format!(
        "[instances.under-test]\nmodule = \"{}\"\n{bind}{isolated}[instances.under-test.config]\n{section}\n",
        module.id()
    );
    let config = Config::parse("certify", &text).map_err(|e| e.to_string())?;
    Kernel::build_with(registry, &config, Some(1)).map_err(|e| e.to_string())
}

/// How a module is certified (in process or isolated), and what its
/// certification configuration asks to be running: a real `redis-server`
/// (on a free loopback port, in a directory of its own, stopped after the
/// module) when it names `{redis}`.
struct Services {
    isolation: IsolationArg,
    redis: Result<RedisServer, String>,
}

impl Services {
    fn for_module(module: &ModuleDescriptor, isolation: IsolationArg) -> Services {
        Services {
            isolation,
            redis: if module.certify_config.contains("{redis}") {
                RedisServer::start()
            } else {
                Err("no redis for this module".into())
            },
        }
    }
}

fn make_driver(
    module: &'static ModuleDescriptor,
    scratch: &Path,
    services: &Services,
) -> DriverHandle {
    let kernel = instance(module, Some("/conformance/"), scratch, services)
        .unwrap_or_else(|e| panic!("cannot make an instance of {}: {e}", module.id()));
    bindery_classes::driver::lookup(kernel.runtime(), "/conformance/x")
        .unwrap_or_else(|| panic!("{} made no driver", module.id()))
}

/// Runs each driver case with storage of its own, as a crate's own tests
/// do: within a case every instance shares one scratch directory (that is
/// a restart), and no case finds another's leftovers (a case that fills
/// the store needs it to be its own).
fn run_fresh(
    module: &'static ModuleDescriptor,
    cases: &'static [bindery_conformance::Case<driver::Harness>],
    services: &Arc<Services>,
) -> Vec<Verdict> {
    cases
        .iter()
        .flat_map(|case| {
            let scratch = Scratch::for_case(module, case.name);
            let dir = scratch.0.clone();
            let services = services.clone();
            let make = move || make_driver(module, &dir, &services);
            let h: &driver::Harness = &make;
            run_all(std::slice::from_ref(case), h)
        })
        .collect()
}

fn certify_one(module: &'static ModuleDescriptor, isolation: IsolationArg) -> Report {
    let mut report = Report {
        module: module.id(),
        krate: module.krate,
        suite: String::new(),
        cases: Vec::new(),
    };
    let setup_failure = |report: &mut Report, e: String| {
        report.cases.push(Verdict {
            case: "makes_an_instance_with_its_default_configuration",
            failure: Some(e),
        })
    };
    match module.class {
        class::DRIVER => {
            let scratch = Scratch::new(module);
            let dir = scratch.0.clone();
            let services = Arc::new(Services::for_module(module, isolation));
            let probe = std::panic::catch_unwind(|| make_driver(module, &dir, &services).info());
            let info = match probe {
                Ok(info) => info,
                Err(p) => {
                    setup_failure(&mut report, bindery_conformance::panic_text(&*p));
                    return report;
                }
            };
            drop(scratch);
            if info.queue {
                report.suite = "driver/queue".into();
                report.cases = run_fresh(module, driver::QUEUE, &services);
                if info.durable {
                    report.suite = "driver/queue+durable".into();
                    report
                        .cases
                        .extend(run_fresh(module, driver::DURABLE, &services));
                }
            } else {
                report.suite = "driver/topic".into();
                report.cases = run_fresh(module, driver::TOPIC, &services);
            }
        }
        class::PARSER => {
            report.suite = class::PARSER.into();
            let scratch = Scratch::new(module);
            let services = Services::for_module(module, isolation);
            let kernel = match instance(module, None, &scratch.0, &services) {
                Ok(k) => k,
                Err(e) => {
                    setup_failure(&mut report, e);
                    return report;
                }
            };
            let handle = kernel.runtime().table(class::PARSER).and_then(|t| {
                t.index()
                    .bindings()
                    .first()
                    .and_then(|b| b.handle::<ParserHandle>().cloned())
            });
            match handle {
                Some(p) => report.cases = run_all(parser::PARSER, &*p),
                None => setup_failure(&mut report, "its instance is bound to no MIME type".into()),
            }
        }
        class::DISPATCHER => {
            report.suite = class::DISPATCHER.into();
            report.cases = run_all(dispatcher::DISPATCHER, &module);
        }
        class::TERMINAL => {
            report.suite = class::TERMINAL.into();
            report.cases = run_all(terminal::TERMINAL, &module);
        }
        class::ROUTE => {
            report.suite = class::ROUTE.into();
            report.cases = run_all(route::ROUTE, &module);
        }
        class::WORKER => {
            report.suite = class::WORKER.into();
            report.cases = run_all(worker::WORKER, &module);
        }
        class::AUTH => {
            let (suite, cases) = certify_auth(module);
            report.suite = suite;
            report.cases = cases;
        }
        other => report.suite = format!("none: no suite for class {other:?}"),
    }
    if isolation == IsolationArg::Process && matches!(module.class, "driver" | "parser") {
        report.suite += " (isolated: through the proxy)";
    }
    report
}

/// An auth module against the auth suite; `auth.file`, whose users and
/// rules certification knows how to write, against the access suite too.
fn certify_auth(module: &'static ModuleDescriptor) -> (String, Vec<Verdict>) {
    use bindery_classes::auth::{Action, AuthHandle};
    use bindery_conformance::auth::{ACCESS, AUTH, Harness, Setup};

    /// `auth.file` instances over files that certification writes.
    struct Files(auth_file::fixture::Fixture);
    type Pairs<'a> = Vec<(&'a str, &'a str)>;
    type Parts<'a> = (Pairs<'a>, Pairs<'a>, Vec<(&'a str, Action, &'a str)>);
    fn parts(s: &Setup) -> Parts<'_> {
        let rules = s
            .rules
            .iter()
            .map(|r| (r.user.as_str(), r.action, r.pattern.as_str()));
        (pairs(&s.users), pairs(&s.tokens), rules.collect())
    }
    impl Harness for Files {
        fn make(&self, s: &Setup) -> Result<AuthHandle, String> {
            let (users, tokens, rules) = parts(s);
            self.0
                .make_with_tokens(&users, &tokens, &rules, s.anonymous)
        }
        fn change(&self, s: &Setup) -> Result<(), String> {
            let (users, tokens, rules) = parts(s);
            self.0.change_with_tokens(&users, &tokens, &rules)
        }
    }
    /// Any other auth module: its instance made from its certification
    /// configuration, whatever the setup.
    struct Made(AuthHandle);
    impl Harness for Made {
        fn make(&self, _: &Setup) -> Result<AuthHandle, String> {
            Ok(self.0.clone())
        }
        fn change(&self, _: &Setup) -> Result<(), String> {
            Ok(())
        }
    }

    if module.id() == "auth.file" {
        let h = Files(auth_file::fixture::Fixture::new());
        let mut cases = run_all(AUTH, &h as &dyn Harness);
        cases.extend(run_all(ACCESS, &h as &dyn Harness));
        return ("auth+access".into(), cases);
    }
    let scratch = Scratch::new(module);
    let services = Services::for_module(module, IsolationArg::None);
    let made = instance(module, None, &scratch.0, &services).and_then(|kernel| {
        let handle = kernel.runtime().table(class::AUTH).and_then(|t| {
            t.index()
                .bindings()
                .first()
                .and_then(|b| b.handle::<AuthHandle>().cloned())
        });
        handle
            .map(|h| (kernel, h))
            .ok_or("its instance is bound to no name".into())
    });
    match made {
        Ok((_kernel, handle)) => ("auth".into(), run_all(AUTH, &Made(handle) as &dyn Harness)),
        Err(e) => (
            "auth".into(),
            vec![Verdict {
                case: "makes_an_instance_with_its_default_configuration",
                failure: Some(e),
            }],
        ),
    }
}

/// Certifies every module `linked` holds; prints a table ending in a
/// one-line summary after an empty line (or JSON), and returns whether
/// every case passed.
pub fn certify(linked: ModuleList, json: bool) -> anyhow::Result<bool> {
    certify_with(linked, json, IsolationArg::None)
}

/// [`certify`], with driver and parser instances run as `isolation` says
/// (terminals and dispatchers always run in process: they cannot be
/// isolated).
pub fn certify_with(
    linked: ModuleList,
    json: bool,
    isolation: IsolationArg,
) -> anyhow::Result<bool> {
    let modules = bindery::linked_modules(linked)?;
    let reports: Vec<Report> = modules
        .into_iter()
        .map(|m| certify_one(m, isolation))
        .collect();
    let failed: usize = reports.iter().map(Report::failed).sum();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reports)?)?;
    } else {
        for r in &reports {
            writeln!(out, "{} ({}) — suite {}", r.module, r.krate, r.suite)?;
            for v in &r.cases {
                match &v.failure {
                    None => writeln!(out, "  pass  {}", v.case)?,
                    Some(why) => writeln!(out, "  FAIL  {}: {why}", v.case)?,
                }
            }
        }
        // The summary stands apart, on a line of its own, and is out
        // before anything else can be written after it.
        let cases: usize = reports.iter().map(|r| r.cases.len()).sum();
        writeln!(
            out,
            "\ncertify: {} modules, {cases} cases: {} passed, {failed} failed",
            reports.len(),
            cases - failed
        )?;
    }
    out.flush()?;
    Ok(failed == 0)
}

/// Borrowed pairs.
fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}
