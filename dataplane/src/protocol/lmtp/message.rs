//! The message after DATA: streamed to the transaction's backend without holding it in
//! memory, then the backend's replies relayed (LMTP: one per accepted recipient, in order).

use super::delivery::Delivery;
use super::{Flavor, Next, Session, Transaction, MESSAGE_CHUNK, UNAVAILABLE};
use crate::codec::smtp::DataRelay;
use crate::error::{Error, Result};

/// For recipients whose message the backend did not confirm.
const NOT_CONFIRMED: &[u8] = b"451 4.4.1 Backend did not confirm delivery, try again later\r\n";

impl Session {
    pub(super) async fn data(&mut self) -> Result<Next> {
        let (mail, mut delivery, accepted) = match std::mem::replace(&mut self.tx, Transaction::Idle) {
            Transaction::Open { mail, delivery, accepted } if accepted > 0 => (mail, delivery, accepted),
            Transaction::Idle => return self.answer(b"503 5.5.1 Need MAIL command\r\n").await,
            other => {
                self.tx = other;
                return self.answer(b"554 5.5.1 No valid recipients\r\n").await;
            }
        };
        let reply = match delivery.command("DATA").await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(destination = delivery.destination(), error = %e, "backend failed at DATA");
                delivery.quit().await;
                // The accepted recipients are lost with the connection: 421, and the
                // sender retries the whole transaction.
                self.send(UNAVAILABLE).await?;
                return Ok(Next::Close);
            }
        };
        self.send(&reply.to_bytes()).await?;
        if reply.code != 354 {
            let closing = reply.code == 421;
            self.tx = Transaction::Open { mail, delivery, accepted };
            return Ok(if closing { Next::Close } else { Next::Continue });
        }
        let mut confirmed = self.stream_message(&mut delivery).await?;
        let replies = if self.flavor == Flavor::Lmtp { accepted } else { 1 };
        let mut out = Vec::new();
        for _ in 0..replies {
            let reply = if confirmed { delivery.final_reply().await.ok() } else { None };
            match reply {
                Some(reply) => out.extend_from_slice(&reply.to_bytes()),
                None => {
                    confirmed = false;
                    out.extend_from_slice(NOT_CONFIRMED);
                }
            }
        }
        self.send(&out).await?;
        self.messages += 1;
        self.progressed();
        // The transaction is over; the next one may belong to another destination.
        delivery.quit().await;
        Ok(Next::Continue)
    }

    /// Streams the message to the backend chunk by chunk; false when the backend failed
    /// on the way (the client's message is still read to its end to stay in step).
    async fn stream_message(&mut self, delivery: &mut Delivery) -> Result<bool> {
        let mut relay = DataRelay::new();
        // What the parser already holds is the message's start; later reads land in the
        // same buffer, so a message of any size costs one buffer of MESSAGE_CHUNK.
        let mut input = self.parser.take_remaining();
        input.reserve(MESSAGE_CHUNK);
        // Only a piece with a bare LF to repair is copied (into `repaired`).
        let mut repaired = Vec::new();
        let mut backend_ok = true;
        loop {
            let (send, end) = relay.relay(&input, &mut repaired);
            self.bytes += end.unwrap_or(input.len()) as u64;
            if backend_ok {
                if let Err(e) = delivery.send(send).await {
                    let destination = delivery.destination();
                    tracing::warn!(destination, error = %e, "backend failed during the message");
                    backend_ok = false;
                }
            }
            if let Some(used) = end {
                self.parser.push(&input[used..]);
                return Ok(backend_ok);
            }
            input.clear();
            if self.read_within(self.ctx.listener.idle_timeout, &mut input).await? == 0 {
                return Err(Error::Client("the client left during the message".into()));
            }
        }
    }
}
