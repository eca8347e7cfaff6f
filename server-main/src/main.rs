//! The stock Bindery server: this file is its module list.
//!
//! To build a custom server, copy this file, change the list, and build it
//! as a binary of its own (see `examples/tiny_server.rs`): one main file,
//! one binary.

fn main() -> std::process::ExitCode {
    let linked = bindery::modules![
        terminal_http,
        terminal_mqtt,
        terminal_amqp,
        terminal_manage,
        route_exec,
        worker_exec,
        dispatcher_fast,
        driver_memqueue,
        driver_filequeue,
        driver_topic,
        driver_redisqueue,
        driver_redistopic,
        parser_json,
        parser_text,
        parser_octets,
        auth_allow,
        auth_file,
    ];
    bindery_server::run(linked, bindery_server::DEFAULT_CONFIG)
}
