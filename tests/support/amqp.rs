//! For the tests against RabbitMQ: the test's own queues.

use lapin::Channel;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// Declares `queue` with `options` and binds it to `exchange` with
/// `routing_key`.
pub async fn bound_queue(ch: &Channel, queue: &str, options: QueueDeclareOptions, exchange: &str, routing_key: &str) {
    ch.queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("declare {queue}: {e}"));
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        routing_key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
}
