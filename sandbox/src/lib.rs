//! Synthetic legacy systems and a one-command local deployment
//! (`vaxgate sandbox`). Filled by the sandbox issue.
#![forbid(unsafe_code)]
