//! Many calls in few scripts: a batch's calls go to the decision script in order, so one
//! client's calls keep their order; on one server a script holds up to `CALLS_PER_SCRIPT`
//! calls of any clients, on a cluster calls are grouped by bucket, as a script's keys share a
//! slot. Calls that need a new session id, and the later calls of their clients, run after,
//! one client at a time in order.

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;

use super::RedisStore;
use super::args::{MAX_CALLS, Reply, parse_replies};
use super::connection::Connection;
use super::keys::bucket_of;
use crate::domain::{ClientHash, Namespace};
use crate::store::{Command, Outcome, SessionStore, StoreError};

/// How many calls one script decides at most: a script holds its Redis while it runs (100
/// calls take about half a millisecond), so a long batch goes in several.
const CALLS_PER_SCRIPT: usize = 100;
const _: () = assert!(CALLS_PER_SCRIPT <= MAX_CALLS);

impl RedisStore {
    /// The batch call: its calls grouped (one group on one server, one per bucket on a
    /// cluster), the groups at once, the answers in the calls' order.
    pub(super) async fn batch(&self, commands: &[Command]) -> Vec<Result<Outcome, StoreError>> {
        let mut groups: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, cmd) in commands.iter().enumerate() {
            let group = match self.connections[0] {
                Connection::Single(_) => 0,
                Connection::Cluster(_) => bucket_of(cmd.client.as_str()),
            };
            groups.entry(group).or_default().push(i);
        }
        let runs = groups
            .into_values()
            .map(|group| self.batch_group(commands, group));
        let mut answers: Vec<_> = join_all(runs).await.into_iter().flatten().collect();
        answers.sort_by_key(|(i, _)| *i);
        answers.into_iter().map(|(_, answer)| answer).collect()
    }

    /// One group of a batch (`execute_batch`): its calls in batch scripts, then the calls
    /// left waiting for a session id.
    async fn batch_group(
        &self,
        commands: &[Command],
        group: Vec<usize>,
    ) -> Vec<(usize, Result<Outcome, StoreError>)> {
        let client = |i: usize| (&commands[i].namespace, &commands[i].client);
        let mut answers = Vec::with_capacity(group.len());
        let mut waiting = HashSet::new();
        let mut later = Vec::new();
        let mut need_id = HashSet::new();
        for chunk in group.chunks(CALLS_PER_SCRIPT) {
            let (held, now): (Vec<usize>, Vec<usize>) =
                chunk.iter().partition(|&&i| waiting.contains(&client(i)));
            later.extend(held);
            if now.is_empty() {
                continue;
            }
            let calls: Vec<_> = now.iter().map(|&i| (&commands[i], None)).collect();
            let invocation = self.decision(&calls);
            let mut con = self.connection();
            let replies = self
                .bounded(invocation.invoke_async(&mut con))
                .await
                .and_then(parse_replies);
            let replies = match replies {
                Ok(replies) => replies,
                Err(e) => {
                    answers.extend(now.into_iter().map(|i| (i, Err(e.clone()))));
                    continue;
                }
            };
            if replies.len() != now.len() {
                let e = StoreError::Corrupt(format!(
                    "decision script answered {} of {} calls",
                    replies.len(),
                    now.len()
                ));
                answers.extend(now.into_iter().map(|i| (i, Err(e.clone()))));
                continue;
            }
            for (i, reply) in now.into_iter().zip(replies) {
                match reply {
                    Ok(Reply::NeedId) => {
                        need_id.insert(i);
                        waiting.insert(client(i));
                        later.push(i);
                    }
                    Ok(Reply::Skipped) => {
                        waiting.insert(client(i));
                        later.push(i);
                    }
                    Ok(reply) => answers.push((i, self.finish(reply, None).await)),
                    Err(e) => answers.push((i, Err(e))),
                }
            }
        }
        answers.extend(self.in_client_order(commands, later, &need_id).await);
        answers
    }

    /// Runs calls one by one per client, in the order given, different clients at once. A
    /// call in `need_id` (the batch script answered that it needs a new session id) reserves
    /// one first.
    async fn in_client_order(
        &self,
        commands: &[Command],
        calls: Vec<usize>,
        need_id: &HashSet<usize>,
    ) -> Vec<(usize, Result<Outcome, StoreError>)> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: HashMap<(&Namespace, &ClientHash), usize> = HashMap::new();
        for i in calls {
            let cmd = &commands[i];
            let next = groups.len();
            let group = *group_of
                .entry((&cmd.namespace, &cmd.client))
                .or_insert(next);
            if group == next {
                groups.push(Vec::new());
            }
            groups[group].push(i);
        }
        let runs = groups.into_iter().map(|group| async move {
            let mut answers = Vec::with_capacity(group.len());
            for i in group {
                // A call the batch script found needing an id reserves one straight away.
                let answer = if need_id.contains(&i) {
                    self.execute_with_id(&commands[i]).await
                } else {
                    self.execute(&commands[i]).await
                };
                answers.push((i, answer));
            }
            answers
        });
        join_all(runs).await.into_iter().flatten().collect()
    }
}
