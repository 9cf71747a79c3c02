//! The local store: the journal directory of one instance.
//!
//! Records go to the embedded [`Journal`] (group commit, fsync policy,
//! recovery, encryption: see `journal.rs`), each body prefixed with its
//! 16-byte lane tag so that claims survive a restart by lane. The pending
//! records and their claims are kept in memory (the journal is a log, not a
//! queue); a restart starts with every pending record unclaimed, which is
//! what an expired lease means. Dead letters go to the journal's
//! dead-letter log, the control state to `<dir>/phase.json` (the same file
//! and fields the cutover's phase keeps, plus a `version`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    Claimed, Control, DeadLetter, Depth, Error, Hold, HoldAck, LaneTag, Member, MemberStatus,
    NextControl, Record, Seq,
};
use crate::journal::{self, Cipher, DeadLetters, Journal};

/// The control file, beside the journal.
const CONTROL_FILE: &str = "phase.json";

#[derive(Debug)]
struct Pending {
    lane: LaneTag,
    body: Vec<u8>,
    appended_at: SystemTime,
    claim: Option<(String, Instant)>,
}

impl Pending {
    fn held(&self, now: Instant) -> bool {
        self.claim.as_ref().is_some_and(|(_, until)| *until > now)
    }
}

/// The local store.
#[derive(Debug)]
pub struct Local {
    journal: Journal,
    dead_letters: DeadLetters,
    cipher: Cipher,
    dir: PathBuf,
    pending: Mutex<BTreeMap<Seq, Pending>>,
    control: Mutex<Control>,
    /// The members (this process only: a local store has no fleet).
    members: Mutex<BTreeMap<String, LocalMember>>,
    /// The hold in progress and when it ends: in memory only, like the
    /// transient phase it goes with (a restart mid-flip resumes in the
    /// phase it was leaving).
    hold: Mutex<Option<(Hold, Instant)>>,
}

#[derive(Debug)]
struct LocalMember {
    member: Member,
    renewed: Instant,
    until: Instant,
    hold_ack: Option<(u64, HoldAck)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ControlFile {
    phase: String,
    epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    flipped_at_ms: Option<u64>,
    #[serde(default)]
    version: u64,
}

impl Local {
    /// Opens the journal in `config.dir` and recovers its pending records.
    /// Blocking.
    pub(super) fn open(config: journal::Config, cipher: Cipher) -> Result<Self, Error> {
        let dir = config.dir.clone();
        let (journal, recovery) = Journal::open(config, cipher.clone())?;
        let dead_letters = DeadLetters::open(&dir, cipher.clone())?;
        let mut pending = BTreeMap::new();
        for entry in recovery.entries {
            let (lane, body) = split(&entry.body, entry.seq, "journal")?;
            pending.insert(
                entry.seq,
                Pending {
                    lane,
                    body,
                    appended_at: entry.appended_at,
                    claim: None,
                },
            );
        }
        let control = read_control(&dir)?;
        Ok(Self {
            journal,
            dead_letters,
            cipher,
            dir,
            pending: Mutex::new(pending),
            control: Mutex::new(control),
            members: Mutex::new(BTreeMap::new()),
            hold: Mutex::new(None),
        })
    }

    fn pending(&self) -> MutexGuard<'_, BTreeMap<Seq, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) async fn append(&self, records: Vec<Record>) -> Result<Vec<Seq>, Error> {
        let tagged: Vec<(LaneTag, Vec<u8>)> = records
            .into_iter()
            .map(|record| (self.cipher.tag(&record.lane), record.body))
            .collect();
        self.append_tagged(tagged).await
    }

    /// Journals `(lane tag, body)` records and takes them as pending.
    async fn append_tagged(&self, tagged: Vec<(LaneTag, Vec<u8>)>) -> Result<Vec<Seq>, Error> {
        let bodies = tagged.iter().map(|(lane, body)| join(lane, body)).collect();
        let seqs = self.journal.append_batch(bodies).await?;
        let now = SystemTime::now();
        let mut pending = self.pending();
        for (seq, (lane, body)) in seqs.clone().zip(tagged) {
            pending.insert(
                seq,
                Pending {
                    lane,
                    body,
                    appended_at: now,
                    claim: None,
                },
            );
        }
        Ok(seqs.collect())
    }

    pub(super) fn claim(&self, owner: &str, max_lanes: usize, lease: Duration) -> Vec<Claimed> {
        let now = Instant::now();
        let mut pending = self.pending();
        let busy: HashSet<LaneTag> = pending
            .values()
            .filter(|p| p.held(now))
            .map(|p| p.lane)
            .collect();
        let mut chosen: Vec<LaneTag> = Vec::new();
        for p in pending.values() {
            if chosen.len() >= max_lanes {
                break;
            }
            if !busy.contains(&p.lane) && !chosen.contains(&p.lane) {
                chosen.push(p.lane);
            }
        }
        let until = now + lease;
        let mut claimed = Vec::new();
        for (seq, p) in pending.iter_mut() {
            if chosen.contains(&p.lane) {
                p.claim = Some((owner.to_owned(), until));
                claimed.push(Claimed {
                    seq: *seq,
                    lane: p.lane,
                    body: p.body.clone(),
                    appended_at: p.appended_at,
                });
            }
        }
        claimed
    }

    pub(super) fn extend(&self, owner: &str, lease: Duration) -> u64 {
        let until = Instant::now() + lease;
        let mut held = 0;
        for p in self.pending().values_mut() {
            if let Some((by, at)) = &mut p.claim
                && by == owner
            {
                *at = until;
                held += 1;
            }
        }
        held
    }

    pub(super) fn release(&self, owner: &str) -> u64 {
        let mut released = 0;
        for p in self.pending().values_mut() {
            if p.claim.as_ref().is_some_and(|(by, _)| by == owner) {
                p.claim = None;
                released += 1;
            }
        }
        released
    }

    pub(super) fn ack(&self, seqs: &[Seq]) {
        let mut pending = self.pending();
        for seq in seqs {
            if pending.remove(seq).is_some() {
                self.journal.ack(*seq);
            }
        }
    }

    pub(super) fn depth(&self) -> Depth {
        let pending = self.pending();
        Depth {
            records: pending.len() as u64,
            oldest: pending.values().map(|p| p.appended_at).min(),
        }
    }

    /// Blocking (the dead-letter log fsyncs).
    pub(super) fn bury(&self, record: &Claimed, reason: &str) -> Result<u64, Error> {
        let id = self
            .dead_letters
            .push(reason, &join(&record.lane, &record.body))?;
        self.ack(&[record.seq]);
        Ok(id)
    }

    /// Blocking (the dead-letter log fsyncs).
    pub(super) fn dead_letter(&self, lane: &[u8], reason: &str, body: &[u8]) -> Result<u64, Error> {
        let tag = self.cipher.tag(lane);
        Ok(self.dead_letters.push(reason, &join(&tag, body))?)
    }

    pub(super) fn lane_pending(&self, lane: &[u8]) -> bool {
        let tag = self.cipher.tag(lane);
        self.pending().values().any(|pending| pending.lane == tag)
    }

    pub(super) fn pending_among(&self, seqs: &[Seq]) -> u64 {
        let pending = self.pending();
        seqs.iter().filter(|seq| pending.contains_key(seq)).count() as u64
    }

    pub(super) fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        self.dead_letters
            .list()
            .into_iter()
            .map(|letter| {
                let (_, body) = split(&letter.body, letter.seq, "dead letters")?;
                Ok(DeadLetter {
                    id: letter.seq,
                    reason: letter.reason,
                    body,
                    dead_at: letter.appended_at,
                })
            })
            .collect()
    }

    /// Re-appends, then clears: a crash in between retries them twice,
    /// which at-least-once sync tolerates; never zero times.
    pub(super) async fn retry_dead_letters(&self, through: u64) -> Result<usize, Error> {
        let letters: Vec<_> = self
            .dead_letters
            .list()
            .into_iter()
            .filter(|letter| letter.seq <= through)
            .collect();
        if letters.is_empty() {
            return Ok(0);
        }
        let mut records = Vec::with_capacity(letters.len());
        for letter in &letters {
            records.push(split(&letter.body, letter.seq, "dead letters")?);
        }
        self.append_tagged(records).await?;
        self.dead_letters.clear_through(through)?;
        Ok(letters.len())
    }

    pub(super) fn renew_member(&self, member: &Member, lease: Duration) {
        let now = Instant::now();
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let hold_ack = members
            .remove(&member.instance)
            .and_then(|known| known.hold_ack);
        members.insert(
            member.instance.clone(),
            LocalMember {
                member: member.clone(),
                renewed: now,
                until: now + lease,
                hold_ack,
            },
        );
    }

    pub(super) fn leave(&self, instance: &str) {
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(instance);
    }

    pub(super) fn members(&self) -> Vec<MemberStatus> {
        let now = Instant::now();
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|known| MemberStatus {
                member: known.member.clone(),
                lease_age_ms: u64::try_from(now.duration_since(known.renewed).as_millis())
                    .unwrap_or(u64::MAX),
                live: known.until > now,
                hold_ack: known.hold_ack.clone(),
            })
            .collect()
    }

    pub(super) fn ack_hold(&self, instance: &str, hold: u64, ack: &HoldAck) -> bool {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        match members.get_mut(instance) {
            Some(known) => {
                known.hold_ack = Some((hold, ack.clone()));
                true
            }
            None => false,
        }
    }

    pub(super) fn control(&self) -> Control {
        let mut control = self
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        control.hold = self
            .hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(hold, until)| Hold {
                expired: *until <= Instant::now(),
                ..hold.clone()
            });
        control
    }

    /// Blocking (writes and fsyncs the control file).
    pub(super) fn set_control(
        &self,
        expected: u64,
        next: &NextControl,
    ) -> Result<Option<Control>, Error> {
        let mut control = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        if control.version != expected {
            return Ok(None);
        }
        let version = expected + 1;
        let hold = next.hold.as_ref().map(|hold| {
            (
                Hold {
                    id: version,
                    coordinator: hold.coordinator.clone(),
                    expired: false,
                },
                Instant::now() + hold.lasting,
            )
        });
        let written = Control {
            phase: next.phase.clone(),
            epoch: next.epoch,
            flipped_at_ms: next.flipped_at_ms,
            version,
            hold: hold.as_ref().map(|(hold, _)| hold.clone()),
        };
        write_control(&self.dir, &written)?;
        *control = written.clone();
        *self.hold.lock().unwrap_or_else(PoisonError::into_inner) = hold;
        Ok(Some(written))
    }

    pub(super) async fn close(&self) -> Result<(), Error> {
        self.journal.clone().close().await?;
        Ok(())
    }
}

fn join(lane: &LaneTag, body: &[u8]) -> Vec<u8> {
    let mut joined = Vec::with_capacity(lane.len() + body.len());
    joined.extend_from_slice(lane);
    joined.extend_from_slice(body);
    joined
}

fn split(stored: &[u8], seq: Seq, place: &'static str) -> Result<(LaneTag, Vec<u8>), Error> {
    let Some((lane, body)) = stored.split_first_chunk::<16>() else {
        return Err(Error::Corrupt {
            place,
            seq,
            reason: "shorter than its lane tag".to_owned(),
        });
    };
    Ok((*lane, body.to_vec()))
}

fn read_control(dir: &std::path::Path) -> Result<Control, Error> {
    let path = dir.join(CONTROL_FILE);
    let io = |op, err: std::io::Error| {
        Error::Journal(journal::Error::Io {
            op,
            path: path.clone(),
            source: std::sync::Arc::new(err),
        })
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let file: ControlFile = serde_json::from_slice(&bytes).map_err(|err| {
                io(
                    "parse control file",
                    std::io::Error::new(std::io::ErrorKind::InvalidData, err.to_string()),
                )
            })?;
            Ok(Control {
                phase: file.phase,
                epoch: file.epoch,
                flipped_at_ms: file.flipped_at_ms,
                version: file.version,
                hold: None,
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Control::default()),
        Err(err) => Err(io("read control file", err)),
    }
}

fn write_control(dir: &std::path::Path, control: &Control) -> Result<(), Error> {
    let path = dir.join(CONTROL_FILE);
    let temp = path.with_extension("json.tmp");
    let io = |op, err: std::io::Error| {
        Error::Journal(journal::Error::Io {
            op,
            path: path.clone(),
            source: std::sync::Arc::new(err),
        })
    };
    let file = ControlFile {
        phase: control.phase.clone(),
        epoch: control.epoch,
        flipped_at_ms: control.flipped_at_ms,
        version: control.version,
    };
    let bytes = serde_json::to_vec(&file).expect("the control state always serialises");
    journal::replace_file(&path, &temp, &bytes).map_err(|err| io("write control file", err))?;
    Ok(())
}
