//! 6. A custom server that links the module: one main file, one binary.
//!
//! ```sh
//! cargo run -p parser_csv --example csv_server
//! curl -i -X POST -H 'Content-Type: text/csv' --data-binary $'a,b\n1,2\n' localhost:8181/tables/t
//! ```

const CONFIG: &str = r#"
[instances.http]
module = "terminal.http"
bind = ["127.0.0.1:8181"]

[instances.dispatcher]
module = "dispatcher.fast"

[instances.tables]
module = "driver.memqueue"
bind = ["/tables/"]

[instances.csv]
module = "parser.csv"
config = { delimiter = "," }
"#;

fn main() -> std::process::ExitCode {
    let linked = bindery::modules![terminal_http, dispatcher_fast, driver_memqueue, parser_csv];
    bindery_server::run(linked, CONFIG)
}
