//! The cloud actor's reconciliation with the providers: reading their instance lists off
//! the loop, deciding with [`rental::review`] what to give back, and destroying it. A
//! record is finished only once its provider confirms the instance is gone.

use super::*;

impl Manager {
    /// Reads the instance lists of the providers this daemon rents from (and of every
    /// provider with a key, until each was listed once), off the loop.
    pub(super) fn start_listing(&mut self) {
        if self.listing || self.ready.is_none() {
            return;
        }
        let mut providers: HashSet<Provider> = self
            .rentals
            .values()
            .filter(|r| r.phase.is_live())
            .map(|r| r.provider)
            .collect();
        for p in [Provider::Vast, Provider::Clore] {
            if !self.listed_once.contains(&p) && self.env.config.key(p).is_some() {
                providers.insert(p);
            }
        }
        let mut accounts = Vec::new();
        for p in providers {
            match self.account(p) {
                Ok(a) => accounts.push(a),
                Err(e) => warn!("cannot check {} rentals: {e}", p.name()),
            }
        }
        if accounts.is_empty() {
            return;
        }
        self.listing = true;
        self.bg.spawn(async move {
            let mut listed = HashMap::new();
            let mut refused = Vec::new();
            for a in accounts {
                // The node port only fills in addresses, which a review does not use.
                match a.list(0).await {
                    Ok(l) => {
                        listed.insert(a.provider(), l);
                    }
                    Err(e) => {
                        if matches!(e, CloudError::BadKey(_)) {
                            refused.push(a.provider());
                        }
                        warn!("cannot list {} instances: {e}", a.provider().name());
                    }
                }
            }
            Bg::Listed(listed, refused)
        });
    }

    pub(super) fn review(&mut self, listed: &HashMap<Provider, Vec<Instance>>) {
        let Some(ready) = &self.ready else {
            return;
        };
        let list: Vec<Rental> = self.rentals.values().cloned().collect();
        let activity = self.env.activity.borrow().clone();
        let renting: HashSet<u64> = self.renting.keys().copied().collect();
        let actions = rental::review(
            &list,
            listed,
            &activity,
            &renting,
            &self.idle_since,
            &ready.label_prefix,
            now_unix(),
        );
        self.apply(actions);
    }

    pub(super) fn apply(&mut self, actions: Vec<Action>) {
        let mut changed = Vec::new();
        for a in actions {
            match a {
                Action::Release { rental, why } => {
                    if let Some(task) = self.renting.remove(&rental) {
                        task.abort();
                    }
                    let Some(r) = self.rentals.get_mut(&rental) else {
                        continue;
                    };
                    if !r.phase.is_live() || r.phase == Phase::Releasing {
                        continue;
                    }
                    info!(rental, instance = ?r.instance, "releasing: {why}");
                    r.phase = Phase::Releasing;
                    r.note = Some(why.to_string());
                    let (provider, instance) = (r.provider, r.instance);
                    changed.push(rental);
                    if let Some(i) = instance {
                        self.destroy(provider, i, Some(rental), false);
                    }
                }
                Action::Destroy {
                    provider,
                    instance,
                    rental,
                    finish,
                } => self.destroy(provider, instance, rental, finish),
                Action::Adopt {
                    rental,
                    instance,
                    started,
                } => {
                    if let Some(r) = self.rentals.get_mut(&rental) {
                        r.instance = Some(instance);
                        if r.started_unix.is_none() {
                            r.started_unix = started.or(Some(r.ordered_unix));
                        }
                        changed.push(rental);
                    }
                }
                Action::Finish { rental } => {
                    if let Some(r) = self.rentals.get_mut(&rental) {
                        r.phase = Phase::Released;
                        r.ended_unix.get_or_insert(now_unix());
                        changed.push(rental);
                        let _ = std::fs::remove_file(
                            self.env.dir.join(format!("known_hosts-{rental}")),
                        );
                    }
                }
            }
        }
        // Written off the loop's critical path: a lost write here is redone by the next
        // review (the provider's list is the truth for releases).
        for id in changed {
            if let Err(e) = self.write(id) {
                warn!(rental = id, "cannot record the rental: {e}");
            }
        }
        self.publish();
    }

    pub(super) fn release_all(&mut self, ids: &[u64], why: Why) {
        let actions = ids
            .iter()
            .map(|id| Action::Release {
                rental: *id,
                why: why.clone(),
            })
            .collect();
        self.apply(actions);
    }

    pub(super) fn destroy(
        &mut self,
        provider: Provider,
        instance: u64,
        rental: Option<u64>,
        finish: bool,
    ) {
        if !self.destroying.insert((provider, instance)) {
            return;
        }
        let account = match self.account(provider) {
            Ok(a) => a,
            Err(e) => {
                warn!(instance, "cannot release: {e}");
                self.destroying.remove(&(provider, instance));
                return;
            }
        };
        self.bg.spawn(async move {
            let result = account.destroy(instance).await;
            Bg::Destroyed {
                provider,
                instance,
                rental,
                finish,
                result,
            }
        });
    }
}
