//! The fleet with nodes simulated in-process: who holds a node id, what a stream sends and
//! when, and how acks and disconnects end the waits.

use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::error::Error;
use crate::route::RouteChange;

const HEARTBEAT: Duration = Duration::from_secs(1);

fn hello(node: &str, instance: &str) -> NodeHello {
    NodeHello { node_id: node.into(), instance_id: instance.into(), ..Default::default() }
}

fn addr(port: u16) -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A node connected as `instance` from port `port`, with its stream and channel.
fn connect(fleet: &Arc<Fleet>, instance: &str, port: u16) -> Result<(Registration, Messages, CommandSender)> {
    let (tx, rx) = mpsc::channel(4);
    let registration = fleet.connect(hello("dp-1", instance), addr(port), ("e".into(), 0), 0, tx.clone())?;
    let welcome = pb::ControlMessage { kind: Some(pb::control_message::Kind::Welcome(pb::Welcome::default())) };
    let messages = fleet.messages("dp-1", &registration, vec![welcome], rx);
    Ok((registration, messages, tx))
}

fn update(revision: u64, key: &str) -> RouteUpdate {
    let change = RouteChange { key: key.into(), destination: Some("new".into()) };
    RouteUpdate { epoch: "e".into(), revision, changes: vec![change], flush: false }
}

fn ack(revision: u64) -> NodeEvent {
    NodeEvent::RevisionAck { epoch: "e".into(), revision }
}

fn command(id: &str) -> pb::ControlMessage {
    wire::command_message(NodeCommand { id: id.into(), kind: CommandKind::Probe })
}

/// What the next message is: "welcome", "update N", "command ID".
async fn next(messages: &mut Messages) -> String {
    use pb::control_message::Kind;
    match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
        Err(_) => "nothing".into(),
        Ok(None) => "end".into(),
        Ok(Some(Err(status))) => format!("{:?}", status.code()),
        Ok(Some(Ok(m))) => match m.kind {
            Some(Kind::Welcome(_)) => "welcome".into(),
            Some(Kind::RouteUpdate(u)) => format!("update {}", u.revision),
            Some(Kind::Command(c)) => format!("command {}", c.id),
            other => format!("{other:?}"),
        },
    }
}

#[tokio::test(start_paused = true)]
async fn a_second_live_process_is_refused_naming_the_holder_and_listed() {
    let fleet = Fleet::new(HEARTBEAT);
    let (_held, _messages, _tx) = connect(&fleet, "first", 4000).unwrap();
    let refused = connect(&fleet, "second", 5000).err().expect("refused");
    let Error::NodeIdInUse(message) = &refused else { panic!("{refused:?}") };
    for part in ["\"dp-1\"", "instance first", "127.0.0.1:4000", "instance second", "127.0.0.1:5000"] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
    assert_eq!(tonic::Status::from(refused).code(), tonic::Code::AlreadyExists);
    assert!(fleet.check_claim(&hello("dp-1", "second"), addr(5000)).is_err());
    let view = &fleet.views()[0];
    assert_eq!((view.instance_id.as_str(), view.address), ("first", addr(4000)), "the holder keeps the id");
    let refusals: Vec<_> = view.refused.iter().map(|r| (r.instance_id.as_str(), r.refusals)).collect();
    assert_eq!(refusals, [("second", 2)]);
    tokio::time::advance(REFUSAL_MEMORY).await;
    assert!(fleet.views()[0].refused.is_empty(), "forgotten after a quiet minute");
}

#[tokio::test(start_paused = true)]
async fn the_same_process_or_a_newcomer_after_a_silent_holder_takes_the_id_over() {
    let fleet = Fleet::new(HEARTBEAT);
    let (old, mut old_messages, _tx) = connect(&fleet, "first", 4000).unwrap();
    assert_eq!(next(&mut old_messages).await, "welcome");
    // The same process reconnecting: its old stream is ended with `aborted`.
    let (newer, mut messages, _tx) = connect(&fleet, "first", 4001).unwrap();
    assert!(old.stop.is_cancelled());
    assert_eq!(next(&mut old_messages).await, "Aborted");
    assert_eq!(next(&mut old_messages).await, "end");
    fleet.disconnect("dp-1", old.stream_id);
    assert!(fleet.views()[0].connected, "a late disconnect of the old stream changes nothing");
    assert_eq!(next(&mut messages).await, "welcome");
    // Another process while the holder is heard from: refused; once silent: it takes over.
    tokio::time::advance(HEARTBEAT * 2).await;
    fleet.on_message("dp-1", newer.stream_id, NodeEvent::Alive);
    tokio::time::advance(HEARTBEAT * 2).await;
    assert!(connect(&fleet, "second", 5000).is_err());
    tokio::time::advance(HEARTBEAT * 2).await;
    let (_third, _m, _t) = connect(&fleet, "second", 5000).expect("the holder was silent for 4 intervals");
    assert!(newer.stop.is_cancelled());
    assert_eq!(fleet.views()[0].instance_id, "second");
    assert!(fleet.views()[0].refused.is_empty(), "it holds the id now");
}

#[tokio::test]
async fn a_disconnected_holder_frees_the_id_and_ends_its_stream() {
    let fleet = Fleet::new(HEARTBEAT);
    let (held, mut messages, _tx) = connect(&fleet, "first", 4000).unwrap();
    assert_eq!(next(&mut messages).await, "welcome");
    fleet.disconnect("dp-1", held.stream_id);
    assert_eq!(next(&mut messages).await, "end");
    assert!(connect(&fleet, "second", 5000).is_ok());
}

#[tokio::test]
async fn an_update_is_taken_when_the_stream_has_room_even_behind_a_full_channel() {
    let fleet = Fleet::new(HEARTBEAT);
    let (held, mut messages, tx) = connect(&fleet, "first", 4000).unwrap();
    for i in 0..4 {
        tx.try_send(command(&format!("c{i}"))).unwrap();
    }
    assert!(tx.try_send(command("c4")).is_err(), "the channel is full");
    // Nobody polls the stream while these are pushed: nothing is sent, nothing is lost.
    fleet.push(update(1, "alice"));
    fleet.push(update(2, "bob"));
    assert_eq!(next(&mut messages).await, "welcome");
    assert_eq!(next(&mut messages).await, "update 2", "both changes, merged, ahead of the commands");
    assert_eq!(next(&mut messages).await, "command c0");
    fleet.push(update(3, "carol"));
    assert_eq!(next(&mut messages).await, "command c1", "revision 2 is not acked yet");
    fleet.on_message("dp-1", held.stream_id, ack(2));
    assert_eq!(next(&mut messages).await, "update 3");
    for id in ["c2", "c3"] {
        assert_eq!(next(&mut messages).await, format!("command {id}"));
    }
    assert_eq!(next(&mut messages).await, "nothing");
}

#[tokio::test(start_paused = true)]
async fn a_command_waits_for_room_no_longer_than_its_timeout() {
    let fleet = Fleet::new(HEARTBEAT);
    let (_held, _messages, tx) = connect(&fleet, "first", 4000).unwrap();
    while tx.try_send(command("filler")).is_ok() {}
    let started = Instant::now();
    let results = fleet.command(CommandKind::Probe, None, Duration::from_secs(3)).await;
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    let got: Vec<_> = results.iter().map(|r| (r.node_id.as_str(), r.instance_id.as_deref(), r.result)).collect();
    assert_eq!(got, [("dp-1", Some("first"), NodeOutcome::Timeout)]);
}

#[tokio::test(start_paused = true)]
async fn a_write_is_reported_for_the_process_that_applied_it() {
    let fleet = Fleet::new(HEARTBEAT);
    let (held, _messages, _tx) = connect(&fleet, "first", 4000).unwrap();
    fleet.push(update(1, "alice"));
    fleet.on_message("dp-1", held.stream_id, ack(1));
    let results = fleet.wait_applied("e", 1, Duration::from_secs(1)).await;
    let got: Vec<_> = results.iter().map(|r| (r.instance_id.as_deref(), r.result)).collect();
    assert_eq!(got, [(Some("first"), NodeOutcome::Applied)]);
    let results = fleet.wait_applied("e", 2, Duration::from_secs(1)).await;
    assert_eq!(results[0].result, NodeOutcome::Timeout);
}

#[tokio::test(start_paused = true)]
async fn nodes_that_left_are_forgotten_after_the_retention_and_past_the_cap() {
    let fleet = Fleet::with_retention(HEARTBEAT, Duration::from_secs(60));
    let (tx, _rx) = mpsc::channel(4);
    for i in 0..MAX_DEPARTED + 5 {
        let registration =
            fleet.connect(hello(&format!("gone-{i}"), "x"), None, ("e".into(), 0), 0, tx.clone()).unwrap();
        fleet.disconnect(&format!("gone-{i}"), registration.stream_id);
        tokio::time::advance(Duration::from_micros(1)).await;
    }
    let (_live, _messages, _tx) = connect(&fleet, "live", 4000).unwrap();
    let views = fleet.views();
    assert_eq!(views.len(), MAX_DEPARTED + 1, "the cap holds, the live node stays");
    assert!(!views.iter().any(|v| v.node_id == "gone-0"), "the oldest departed go first");
    tokio::time::advance(Duration::from_secs(61)).await;
    let ids: Vec<String> = fleet.views().into_iter().map(|v| v.node_id).collect();
    assert_eq!(ids, ["dp-1"], "after the retention only the connected node is listed");
}
