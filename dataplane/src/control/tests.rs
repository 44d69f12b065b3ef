use super::*;

#[test]
fn backoff_grows_is_capped_and_jittered() {
    for failures in 1..20 {
        let b = backoff(failures);
        assert!(b <= Duration::from_secs(10));
        assert!(b >= Duration::from_millis(200));
    }
    assert!(backoff(1) <= Duration::from_millis(400));
    assert!(backoff(10) >= Duration::from_secs(5));
}

#[test]
fn a_replayed_command_id_is_remembered_and_old_ones_forgotten() {
    let mut seen = SeenCommands::default();
    for i in 0..=SeenCommands::CAPACITY {
        seen.remember(pb::CommandAck { command_id: format!("c{i}"), ..Default::default() });
    }
    assert!(!seen.acks.contains_key("c0"));
    assert!(seen.acks.contains_key("c1"));
    assert_eq!(seen.acks.len(), SeenCommands::CAPACITY);
}

mod outbound {
    use std::time::Duration;

    use futures::StreamExt;

    use super::super::outbound::{Outbound, MAX_UNSENT_ACKS};
    use switchyard_proto::v1 as pb;

    fn ack(id: &str) -> pb::node_message::Kind {
        pb::node_message::Kind::CommandAck(pb::CommandAck { command_id: id.into(), ..Default::default() })
    }

    fn revision(r: u64) -> pb::node_message::Kind {
        pb::node_message::Kind::RevisionAck(pb::RevisionAck { epoch: "e".into(), revision: r })
    }

    fn describe(m: pb::NodeMessage) -> String {
        use pb::node_message::Kind;
        match m.kind {
            Some(Kind::Hello(_)) => "hello".into(),
            Some(Kind::RevisionAck(a)) => format!("revision {}", a.revision),
            Some(Kind::CommandAck(a)) => format!("ack {}", a.command_id),
            Some(Kind::Report(r)) => format!("report {}", r.cache_hits),
            Some(Kind::Heartbeat(_)) => "heartbeat".into(),
            None => "empty".into(),
        }
    }

    #[tokio::test]
    async fn queuing_never_waits_and_the_latest_ack_report_and_heartbeat_win() {
        let out = Outbound::new();
        let stream = out.stream();
        tokio::pin!(stream);
        // Nobody takes anything while these are queued: none of them waits.
        out.queue(ack("c1")).unwrap();
        out.queue(revision(3)).unwrap();
        out.queue(pb::node_message::Kind::Report(pb::Report { cache_hits: 1, ..Default::default() })).unwrap();
        out.queue(revision(4)).unwrap();
        out.queue(pb::node_message::Kind::Heartbeat(pb::Heartbeat::default())).unwrap();
        out.queue(pb::node_message::Kind::Report(pb::Report { cache_hits: 2, ..Default::default() })).unwrap();
        out.queue(ack("c2")).unwrap();
        out.queue(pb::node_message::Kind::Heartbeat(pb::Heartbeat::default())).unwrap();
        out.queue(pb::node_message::Kind::Hello(pb::Hello::default())).unwrap();
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(describe(stream.next().await.unwrap()));
        }
        assert_eq!(got, ["hello", "revision 4", "ack c1", "ack c2", "report 2", "heartbeat"]);
        let idle = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(idle.is_err(), "nothing else was queued");
        out.queue(ack("c3")).unwrap();
        assert_eq!(describe(stream.next().await.unwrap()), "ack c3", "woken by a later queue");
        out.close();
        assert!(stream.next().await.is_none(), "closed");
    }

    #[test]
    fn too_many_untaken_command_acks_end_the_session() {
        let out = Outbound::new();
        for i in 0..MAX_UNSENT_ACKS {
            out.queue(ack(&i.to_string())).unwrap();
        }
        let error = out.queue(ack("one more")).unwrap_err();
        assert!(error.to_string().contains("has not taken"), "{error}");
        out.queue(revision(1)).unwrap();
    }
}
