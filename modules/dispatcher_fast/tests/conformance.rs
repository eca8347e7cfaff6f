//! `dispatcher.fast` against the dispatcher contract.

bindery_conformance::dispatcher_suite!(&dispatcher_fast::MODULE);
