//! The AMQP 0-9-1 methods this server speaks, both directions, with their
//! class and method ids; encoded and decoded by hand (see the crate docs
//! for why not a generated codec), every one round-trip tested, packed bit
//! fields included ([`crate::tests`]).
//!
//! Reserved fields (tickets, `out-of-band`, `known-hosts`, `cluster-id`)
//! are read and skipped, and written as zero or empty.
//!
//! Long: it is the table of the protocol's methods, each one's fields in
//! order, once for decoding and once for encoding, side by side.

use bytes::Bytes;

use crate::wire::{
    Reader, Result, Table, put_bits, put_longstr, put_shortstr, put_table, put_u16, put_u32,
    put_u64,
};

/// A method frame's content.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub(crate) enum Method {
    ConnectionStart {
        server_properties: Table,
        mechanisms: Bytes,
        locales: Bytes,
    },
    ConnectionStartOk {
        client_properties: Table,
        mechanism: String,
        response: Bytes,
        locale: String,
    },
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionTuneOk {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionOpen {
        vhost: String,
    },
    ConnectionOpenOk,
    ConnectionClose {
        code: u16,
        text: String,
        class: u16,
        method: u16,
    },
    ConnectionCloseOk,
    ConnectionBlocked {
        reason: String,
    },
    ConnectionUnblocked,
    ConnectionUpdateSecret {
        new_secret: Bytes,
        reason: String,
    },
    ConnectionUpdateSecretOk,
    ChannelOpen,
    ChannelOpenOk,
    ChannelFlow {
        active: bool,
    },
    ChannelFlowOk {
        active: bool,
    },
    ChannelClose {
        code: u16,
        text: String,
        class: u16,
        method: u16,
    },
    ChannelCloseOk,
    ExchangeDeclare {
        exchange: String,
        kind: String,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        no_wait: bool,
        arguments: Table,
    },
    ExchangeDeclareOk,
    ExchangeDelete {
        exchange: String,
        if_unused: bool,
        no_wait: bool,
    },
    ExchangeDeleteOk,
    QueueDeclare {
        queue: String,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        no_wait: bool,
        arguments: Table,
    },
    QueueDeclareOk {
        queue: String,
        message_count: u32,
        consumer_count: u32,
    },
    QueueBind {
        queue: String,
        exchange: String,
        routing_key: String,
        no_wait: bool,
        arguments: Table,
    },
    QueueBindOk,
    QueueUnbind {
        queue: String,
        exchange: String,
        routing_key: String,
        arguments: Table,
    },
    QueueUnbindOk,
    QueuePurge {
        queue: String,
        no_wait: bool,
    },
    QueuePurgeOk {
        message_count: u32,
    },
    QueueDelete {
        queue: String,
        if_unused: bool,
        if_empty: bool,
        no_wait: bool,
    },
    QueueDeleteOk {
        message_count: u32,
    },
    BasicQos {
        prefetch_size: u32,
        prefetch_count: u16,
        global: bool,
    },
    BasicQosOk,
    BasicConsume {
        queue: String,
        consumer_tag: String,
        no_local: bool,
        no_ack: bool,
        exclusive: bool,
        no_wait: bool,
        arguments: Table,
    },
    BasicConsumeOk {
        consumer_tag: String,
    },
    BasicCancel {
        consumer_tag: String,
        no_wait: bool,
    },
    BasicCancelOk {
        consumer_tag: String,
    },
    BasicPublish {
        exchange: String,
        routing_key: String,
        mandatory: bool,
        immediate: bool,
    },
    BasicReturn {
        code: u16,
        text: String,
        exchange: String,
        routing_key: String,
    },
    BasicDeliver {
        consumer_tag: String,
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
    },
    BasicGet {
        queue: String,
        no_ack: bool,
    },
    BasicGetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
        message_count: u32,
    },
    BasicGetEmpty,
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicReject {
        delivery_tag: u64,
        requeue: bool,
    },
    BasicRecoverAsync {
        requeue: bool,
    },
    BasicRecover {
        requeue: bool,
    },
    BasicRecoverOk,
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    ConfirmSelect {
        no_wait: bool,
    },
    ConfirmSelectOk,
    /// A method this server does not implement (tx, exchange.bind,
    /// connection.secure ...): answered with `540 NOT_IMPLEMENTED`.
    Other {
        class: u16,
        method: u16,
    },
}

impl Method {
    /// Class and method id.
    pub(crate) fn id(&self) -> (u16, u16) {
        use Method::*;
        match self {
            ConnectionStart { .. } => (10, 10),
            ConnectionStartOk { .. } => (10, 11),
            ConnectionTune { .. } => (10, 30),
            ConnectionTuneOk { .. } => (10, 31),
            ConnectionOpen { .. } => (10, 40),
            ConnectionOpenOk => (10, 41),
            ConnectionClose { .. } => (10, 50),
            ConnectionCloseOk => (10, 51),
            ConnectionBlocked { .. } => (10, 60),
            ConnectionUnblocked => (10, 61),
            ConnectionUpdateSecret { .. } => (10, 70),
            ConnectionUpdateSecretOk => (10, 71),
            ChannelOpen => (20, 10),
            ChannelOpenOk => (20, 11),
            ChannelFlow { .. } => (20, 20),
            ChannelFlowOk { .. } => (20, 21),
            ChannelClose { .. } => (20, 40),
            ChannelCloseOk => (20, 41),
            ExchangeDeclare { .. } => (40, 10),
            ExchangeDeclareOk => (40, 11),
            ExchangeDelete { .. } => (40, 20),
            ExchangeDeleteOk => (40, 21),
            QueueDeclare { .. } => (50, 10),
            QueueDeclareOk { .. } => (50, 11),
            QueueBind { .. } => (50, 20),
            QueueBindOk => (50, 21),
            QueuePurge { .. } => (50, 30),
            QueuePurgeOk { .. } => (50, 31),
            QueueDelete { .. } => (50, 40),
            QueueDeleteOk { .. } => (50, 41),
            QueueUnbind { .. } => (50, 50),
            QueueUnbindOk => (50, 51),
            BasicQos { .. } => (60, 10),
            BasicQosOk => (60, 11),
            BasicConsume { .. } => (60, 20),
            BasicConsumeOk { .. } => (60, 21),
            BasicCancel { .. } => (60, 30),
            BasicCancelOk { .. } => (60, 31),
            BasicPublish { .. } => (60, 40),
            BasicReturn { .. } => (60, 50),
            BasicDeliver { .. } => (60, 60),
            BasicGet { .. } => (60, 70),
            BasicGetOk { .. } => (60, 71),
            BasicGetEmpty => (60, 72),
            BasicAck { .. } => (60, 80),
            BasicReject { .. } => (60, 90),
            BasicRecoverAsync { .. } => (60, 100),
            BasicRecover { .. } => (60, 110),
            BasicRecoverOk => (60, 111),
            BasicNack { .. } => (60, 120),
            ConfirmSelect { .. } => (85, 10),
            ConfirmSelectOk => (85, 11),
            Other { class, method } => (*class, *method),
        }
    }

    /// The method's name as the spec writes it, for reply texts.
    pub(crate) fn name(&self) -> String {
        let (c, m) = self.id();
        let known = match (c, m) {
            (10, 10) => "connection.start",
            (10, 11) => "connection.start-ok",
            (10, 30) => "connection.tune",
            (10, 31) => "connection.tune-ok",
            (10, 40) => "connection.open",
            (10, 41) => "connection.open-ok",
            (10, 50) => "connection.close",
            (10, 51) => "connection.close-ok",
            (10, 60) => "connection.blocked",
            (10, 61) => "connection.unblocked",
            (10, 70) => "connection.update-secret",
            (10, 71) => "connection.update-secret-ok",
            (20, 10) => "channel.open",
            (20, 11) => "channel.open-ok",
            (20, 20) => "channel.flow",
            (20, 21) => "channel.flow-ok",
            (20, 40) => "channel.close",
            (20, 41) => "channel.close-ok",
            (40, 10) => "exchange.declare",
            (40, 11) => "exchange.declare-ok",
            (40, 20) => "exchange.delete",
            (40, 21) => "exchange.delete-ok",
            (50, 10) => "queue.declare",
            (50, 11) => "queue.declare-ok",
            (50, 20) => "queue.bind",
            (50, 21) => "queue.bind-ok",
            (50, 30) => "queue.purge",
            (50, 31) => "queue.purge-ok",
            (50, 40) => "queue.delete",
            (50, 41) => "queue.delete-ok",
            (50, 50) => "queue.unbind",
            (50, 51) => "queue.unbind-ok",
            (60, 10) => "basic.qos",
            (60, 11) => "basic.qos-ok",
            (60, 20) => "basic.consume",
            (60, 21) => "basic.consume-ok",
            (60, 30) => "basic.cancel",
            (60, 31) => "basic.cancel-ok",
            (60, 40) => "basic.publish",
            (60, 50) => "basic.return",
            (60, 60) => "basic.deliver",
            (60, 70) => "basic.get",
            (60, 71) => "basic.get-ok",
            (60, 72) => "basic.get-empty",
            (60, 80) => "basic.ack",
            (60, 90) => "basic.reject",
            (60, 100) => "basic.recover-async",
            (60, 110) => "basic.recover",
            (60, 111) => "basic.recover-ok",
            (60, 120) => "basic.nack",
            (85, 10) => "confirm.select",
            (85, 11) => "confirm.select-ok",
            (90, _) => "tx",
            (40, 30 | 31 | 40 | 51) => "exchange.bind",
            _ => "",
        };
        match known {
            "" => format!("method {c}.{m}"),
            "tx" => format!("tx method {m}"),
            k => k.to_owned(),
        }
    }
}

/// Decodes a method frame's payload.
pub(crate) fn decode(payload: &[u8]) -> Result<Method> {
    use Method::*;
    let mut r = Reader::new(payload);
    let class = r.u16("class id")?;
    let method = r.u16("method id")?;
    let r = &mut r;
    let m = match (class, method) {
        (10, 10) => {
            let _major = r.u8("version-major")?;
            let _minor = r.u8("version-minor")?;
            ConnectionStart {
                server_properties: r.table("server-properties")?,
                mechanisms: r.longstr("mechanisms")?,
                locales: r.longstr("locales")?,
            }
        }
        (10, 11) => ConnectionStartOk {
            client_properties: r.table("client-properties")?,
            mechanism: r.shortstr("mechanism")?,
            response: r.longstr("response")?,
            locale: r.shortstr("locale")?,
        },
        (10, 30) | (10, 31) => {
            let channel_max = r.u16("channel-max")?;
            let frame_max = r.u32("frame-max")?;
            let heartbeat = r.u16("heartbeat")?;
            if method == 30 {
                ConnectionTune {
                    channel_max,
                    frame_max,
                    heartbeat,
                }
            } else {
                ConnectionTuneOk {
                    channel_max,
                    frame_max,
                    heartbeat,
                }
            }
        }
        (10, 40) => {
            let vhost = r.shortstr("virtual-host")?;
            let _capabilities = r.shortstr("capabilities")?;
            let _insist = r.bits::<1>("insist")?;
            ConnectionOpen { vhost }
        }
        (10, 41) => {
            let _known_hosts = r.shortstr("known-hosts")?;
            ConnectionOpenOk
        }
        (10, 50) | (20, 40) => {
            let code = r.u16("reply-code")?;
            let text = r.shortstr("reply-text")?;
            let c = r.u16("class-id")?;
            let m = r.u16("method-id")?;
            if class == 10 {
                ConnectionClose {
                    code,
                    text,
                    class: c,
                    method: m,
                }
            } else {
                ChannelClose {
                    code,
                    text,
                    class: c,
                    method: m,
                }
            }
        }
        (10, 51) => ConnectionCloseOk,
        (10, 60) => ConnectionBlocked {
            reason: r.shortstr("reason")?,
        },
        (10, 61) => ConnectionUnblocked,
        (10, 70) => ConnectionUpdateSecret {
            new_secret: r.longstr("new-secret")?,
            reason: r.shortstr("reason")?,
        },
        (10, 71) => ConnectionUpdateSecretOk,
        (20, 10) => {
            let _oob = r.shortstr("out-of-band")?;
            ChannelOpen
        }
        (20, 11) => {
            let _id = r.longstr("channel-id")?;
            ChannelOpenOk
        }
        (20, 20) => ChannelFlow {
            active: r.bits::<1>("active")?[0],
        },
        (20, 21) => ChannelFlowOk {
            active: r.bits::<1>("active")?[0],
        },
        (20, 41) => ChannelCloseOk,
        (40, 10) => {
            let _ticket = r.u16("reserved-1")?;
            let exchange = r.shortstr("exchange")?;
            let kind = r.shortstr("type")?;
            let [passive, durable, auto_delete, internal, no_wait] =
                r.bits("exchange.declare bits")?;
            ExchangeDeclare {
                exchange,
                kind,
                passive,
                durable,
                auto_delete,
                internal,
                no_wait,
                arguments: r.table("arguments")?,
            }
        }
        (40, 11) => ExchangeDeclareOk,
        (40, 20) => {
            let _ticket = r.u16("reserved-1")?;
            let exchange = r.shortstr("exchange")?;
            let [if_unused, no_wait] = r.bits("exchange.delete bits")?;
            ExchangeDelete {
                exchange,
                if_unused,
                no_wait,
            }
        }
        (40, 21) => ExchangeDeleteOk,
        (50, 10) => {
            let _ticket = r.u16("reserved-1")?;
            let queue = r.shortstr("queue")?;
            let [passive, durable, exclusive, auto_delete, no_wait] =
                r.bits("queue.declare bits")?;
            QueueDeclare {
                queue,
                passive,
                durable,
                exclusive,
                auto_delete,
                no_wait,
                arguments: r.table("arguments")?,
            }
        }
        (50, 11) => QueueDeclareOk {
            queue: r.shortstr("queue")?,
            message_count: r.u32("message-count")?,
            consumer_count: r.u32("consumer-count")?,
        },
        (50, 20) => {
            let _ticket = r.u16("reserved-1")?;
            let queue = r.shortstr("queue")?;
            let exchange = r.shortstr("exchange")?;
            let routing_key = r.shortstr("routing-key")?;
            let [no_wait] = r.bits("no-wait")?;
            QueueBind {
                queue,
                exchange,
                routing_key,
                no_wait,
                arguments: r.table("arguments")?,
            }
        }
        (50, 21) => QueueBindOk,
        (50, 30) => {
            let _ticket = r.u16("reserved-1")?;
            let queue = r.shortstr("queue")?;
            let [no_wait] = r.bits("no-wait")?;
            QueuePurge { queue, no_wait }
        }
        (50, 31) => QueuePurgeOk {
            message_count: r.u32("message-count")?,
        },
        (50, 40) => {
            let _ticket = r.u16("reserved-1")?;
            let queue = r.shortstr("queue")?;
            let [if_unused, if_empty, no_wait] = r.bits("queue.delete bits")?;
            QueueDelete {
                queue,
                if_unused,
                if_empty,
                no_wait,
            }
        }
        (50, 41) => QueueDeleteOk {
            message_count: r.u32("message-count")?,
        },
        (50, 50) => {
            let _ticket = r.u16("reserved-1")?;
            QueueUnbind {
                queue: r.shortstr("queue")?,
                exchange: r.shortstr("exchange")?,
                routing_key: r.shortstr("routing-key")?,
                arguments: r.table("arguments")?,
            }
        }
        (50, 51) => QueueUnbindOk,
        (60, 10) => BasicQos {
            prefetch_size: r.u32("prefetch-size")?,
            prefetch_count: r.u16("prefetch-count")?,
            global: r.bits::<1>("global")?[0],
        },
        (60, 11) => BasicQosOk,
        (60, 20) => {
            let _ticket = r.u16("reserved-1")?;
            let queue = r.shortstr("queue")?;
            let consumer_tag = r.shortstr("consumer-tag")?;
            let [no_local, no_ack, exclusive, no_wait] = r.bits("basic.consume bits")?;
            BasicConsume {
                queue,
                consumer_tag,
                no_local,
                no_ack,
                exclusive,
                no_wait,
                arguments: r.table("arguments")?,
            }
        }
        (60, 21) => BasicConsumeOk {
            consumer_tag: r.shortstr("consumer-tag")?,
        },
        (60, 30) => BasicCancel {
            consumer_tag: r.shortstr("consumer-tag")?,
            no_wait: r.bits::<1>("no-wait")?[0],
        },
        (60, 31) => BasicCancelOk {
            consumer_tag: r.shortstr("consumer-tag")?,
        },
        (60, 40) => {
            let _ticket = r.u16("reserved-1")?;
            let exchange = r.shortstr("exchange")?;
            let routing_key = r.shortstr("routing-key")?;
            let [mandatory, immediate] = r.bits("basic.publish bits")?;
            BasicPublish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            }
        }
        (60, 50) => BasicReturn {
            code: r.u16("reply-code")?,
            text: r.shortstr("reply-text")?,
            exchange: r.shortstr("exchange")?,
            routing_key: r.shortstr("routing-key")?,
        },
        (60, 60) => BasicDeliver {
            consumer_tag: r.shortstr("consumer-tag")?,
            delivery_tag: r.u64("delivery-tag")?,
            redelivered: r.bits::<1>("redelivered")?[0],
            exchange: r.shortstr("exchange")?,
            routing_key: r.shortstr("routing-key")?,
        },
        (60, 70) => {
            let _ticket = r.u16("reserved-1")?;
            BasicGet {
                queue: r.shortstr("queue")?,
                no_ack: r.bits::<1>("no-ack")?[0],
            }
        }
        (60, 71) => BasicGetOk {
            delivery_tag: r.u64("delivery-tag")?,
            redelivered: r.bits::<1>("redelivered")?[0],
            exchange: r.shortstr("exchange")?,
            routing_key: r.shortstr("routing-key")?,
            message_count: r.u32("message-count")?,
        },
        (60, 72) => {
            let _cluster = r.shortstr("reserved-1")?;
            BasicGetEmpty
        }
        (60, 80) => BasicAck {
            delivery_tag: r.u64("delivery-tag")?,
            multiple: r.bits::<1>("multiple")?[0],
        },
        (60, 90) => BasicReject {
            delivery_tag: r.u64("delivery-tag")?,
            requeue: r.bits::<1>("requeue")?[0],
        },
        (60, 100) => BasicRecoverAsync {
            requeue: r.bits::<1>("requeue")?[0],
        },
        (60, 110) => BasicRecover {
            requeue: r.bits::<1>("requeue")?[0],
        },
        (60, 111) => BasicRecoverOk,
        (60, 120) => {
            let delivery_tag = r.u64("delivery-tag")?;
            let [multiple, requeue] = r.bits("basic.nack bits")?;
            BasicNack {
                delivery_tag,
                multiple,
                requeue,
            }
        }
        (85, 10) => ConfirmSelect {
            no_wait: r.bits::<1>("no-wait")?[0],
        },
        (85, 11) => ConfirmSelectOk,
        (class, method) => {
            r.rest();
            Other { class, method }
        }
    };
    if !r.done() {
        return Err(format!(
            "method {class}.{method}: {} bytes left over at offset {}",
            payload.len() - r.at(),
            r.at()
        ));
    }
    Ok(m)
}

/// Appends a method frame's payload.
pub(crate) fn encode(out: &mut Vec<u8>, m: &Method) {
    use Method::*;
    let (class, method) = m.id();
    put_u16(out, class);
    put_u16(out, method);
    match m {
        ConnectionStart {
            server_properties,
            mechanisms,
            locales,
        } => {
            out.extend_from_slice(&[0, 9]);
            put_table(out, server_properties);
            put_longstr(out, mechanisms);
            put_longstr(out, locales);
        }
        ConnectionStartOk {
            client_properties,
            mechanism,
            response,
            locale,
        } => {
            put_table(out, client_properties);
            put_shortstr(out, mechanism);
            put_longstr(out, response);
            put_shortstr(out, locale);
        }
        ConnectionTune {
            channel_max,
            frame_max,
            heartbeat,
        }
        | ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat,
        } => {
            put_u16(out, *channel_max);
            put_u32(out, *frame_max);
            put_u16(out, *heartbeat);
        }
        ConnectionOpen { vhost } => {
            put_shortstr(out, vhost);
            put_shortstr(out, "");
            put_bits(out, &[false]);
        }
        ConnectionOpenOk => put_shortstr(out, ""),
        ConnectionClose {
            code,
            text,
            class,
            method,
        }
        | ChannelClose {
            code,
            text,
            class,
            method,
        } => {
            put_u16(out, *code);
            put_shortstr(out, text);
            put_u16(out, *class);
            put_u16(out, *method);
        }
        ConnectionBlocked { reason } => put_shortstr(out, reason),
        ConnectionUpdateSecret { new_secret, reason } => {
            put_longstr(out, new_secret);
            put_shortstr(out, reason);
        }
        ChannelOpen => put_shortstr(out, ""),
        ChannelOpenOk => put_longstr(out, b""),
        ChannelFlow { active } | ChannelFlowOk { active } => put_bits(out, &[*active]),
        ExchangeDeclare {
            exchange,
            kind,
            passive,
            durable,
            auto_delete,
            internal,
            no_wait,
            arguments,
        } => {
            put_u16(out, 0);
            put_shortstr(out, exchange);
            put_shortstr(out, kind);
            put_bits(
                out,
                &[*passive, *durable, *auto_delete, *internal, *no_wait],
            );
            put_table(out, arguments);
        }
        ExchangeDelete {
            exchange,
            if_unused,
            no_wait,
        } => {
            put_u16(out, 0);
            put_shortstr(out, exchange);
            put_bits(out, &[*if_unused, *no_wait]);
        }
        QueueDeclare {
            queue,
            passive,
            durable,
            exclusive,
            auto_delete,
            no_wait,
            arguments,
        } => {
            put_u16(out, 0);
            put_shortstr(out, queue);
            put_bits(
                out,
                &[*passive, *durable, *exclusive, *auto_delete, *no_wait],
            );
            put_table(out, arguments);
        }
        QueueDeclareOk {
            queue,
            message_count,
            consumer_count,
        } => {
            put_shortstr(out, queue);
            put_u32(out, *message_count);
            put_u32(out, *consumer_count);
        }
        QueueBind {
            queue,
            exchange,
            routing_key,
            no_wait,
            arguments,
        } => {
            put_u16(out, 0);
            put_shortstr(out, queue);
            put_shortstr(out, exchange);
            put_shortstr(out, routing_key);
            put_bits(out, &[*no_wait]);
            put_table(out, arguments);
        }
        QueueUnbind {
            queue,
            exchange,
            routing_key,
            arguments,
        } => {
            put_u16(out, 0);
            put_shortstr(out, queue);
            put_shortstr(out, exchange);
            put_shortstr(out, routing_key);
            put_table(out, arguments);
        }
        QueuePurge { queue, no_wait } => {
            put_u16(out, 0);
            put_shortstr(out, queue);
            put_bits(out, &[*no_wait]);
        }
        QueuePurgeOk { message_count } | QueueDeleteOk { message_count } => {
            put_u32(out, *message_count)
        }
        QueueDelete {
            queue,
            if_unused,
            if_empty,
            no_wait,
        } => {
            put_u16(out, 0);
            put_shortstr(out, queue);
            put_bits(out, &[*if_unused, *if_empty, *no_wait]);
        }
        BasicQos {
            prefetch_size,
            prefetch_count,
            global,
        } => {
            put_u32(out, *prefetch_size);
            put_u16(out, *prefetch_count);
            put_bits(out, &[*global]);
        }
        BasicConsume {
            queue,
            consumer_tag,
            no_local,
            no_ack,
            exclusive,
            no_wait,
            arguments,
        } => {
            put_u16(out, 0);
            put_shortstr(out, queue);
            put_shortstr(out, consumer_tag);
            put_bits(out, &[*no_local, *no_ack, *exclusive, *no_wait]);
            put_table(out, arguments);
        }
        BasicConsumeOk { consumer_tag } | BasicCancelOk { consumer_tag } => {
            put_shortstr(out, consumer_tag)
        }
        BasicCancel {
            consumer_tag,
            no_wait,
        } => {
            put_shortstr(out, consumer_tag);
            put_bits(out, &[*no_wait]);
        }
        BasicPublish {
            exchange,
            routing_key,
            mandatory,
            immediate,
        } => {
            put_u16(out, 0);
            put_shortstr(out, exchange);
            put_shortstr(out, routing_key);
            put_bits(out, &[*mandatory, *immediate]);
        }
        BasicReturn {
            code,
            text,
            exchange,
            routing_key,
        } => {
            put_u16(out, *code);
            put_shortstr(out, text);
            put_shortstr(out, exchange);
            put_shortstr(out, routing_key);
        }
        BasicDeliver {
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
        } => {
            put_shortstr(out, consumer_tag);
            put_u64(out, *delivery_tag);
            put_bits(out, &[*redelivered]);
            put_shortstr(out, exchange);
            put_shortstr(out, routing_key);
        }
        BasicGet { queue, no_ack } => {
            put_u16(out, 0);
            put_shortstr(out, queue);
            put_bits(out, &[*no_ack]);
        }
        BasicGetOk {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            message_count,
        } => {
            put_u64(out, *delivery_tag);
            put_bits(out, &[*redelivered]);
            put_shortstr(out, exchange);
            put_shortstr(out, routing_key);
            put_u32(out, *message_count);
        }
        BasicGetEmpty => put_shortstr(out, ""),
        BasicAck {
            delivery_tag,
            multiple,
        } => {
            put_u64(out, *delivery_tag);
            put_bits(out, &[*multiple]);
        }
        BasicReject {
            delivery_tag,
            requeue,
        } => {
            put_u64(out, *delivery_tag);
            put_bits(out, &[*requeue]);
        }
        BasicRecoverAsync { requeue } | BasicRecover { requeue } => put_bits(out, &[*requeue]),
        BasicNack {
            delivery_tag,
            multiple,
            requeue,
        } => {
            put_u64(out, *delivery_tag);
            put_bits(out, &[*multiple, *requeue]);
        }
        ConfirmSelect { no_wait } => put_bits(out, &[*no_wait]),
        ConnectionCloseOk
        | ConnectionUpdateSecretOk
        | ConnectionUnblocked
        | ChannelCloseOk
        | ExchangeDeclareOk
        | ExchangeDeleteOk
        | QueueBindOk
        | QueueUnbindOk
        | BasicQosOk
        | BasicRecoverOk
        | ConfirmSelectOk
        | Other { .. } => {}
    }
}
