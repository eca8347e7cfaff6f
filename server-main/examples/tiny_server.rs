//! A custom server built from its own main file: HTTP, one memory queue
//! driver and the catch-all parser, nothing else. One main file, one binary.
//!
//! ```sh
//! cargo run -p bindery-server --example tiny_server -- --listen 127.0.0.1:9090
//! ```

const CONFIG: &str = r#"
[instances.http]
module = "terminal.http"
bind = ["127.0.0.1:9090"]

[instances.dispatcher]
module = "dispatcher.fast"

[instances.queues]
module = "driver.memqueue"
bind = ["/"]

[instances.any]
module = "parser.octets"
"#;

fn main() -> std::process::ExitCode {
    let linked = bindery::modules![
        terminal_http,
        dispatcher_fast,
        driver_memqueue,
        parser_octets
    ];
    bindery_server::run(linked, CONFIG)
}
