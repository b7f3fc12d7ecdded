//! One provider account behind one interface: what renting needs of Vast and Clore alike.

use super::instance::{Instance, RentSpec};
use super::offers::{Filter, Offer};
use super::{CloudConfig, CloudError, Provider, clore::Clore, vast::Vast};

/// Offers asked of Vast per search.
const VAST_OFFERS: u32 = 64;

/// A provider account: its client, with the key from the configuration.
pub enum Account {
    Vast(Vast),
    Clore(Clore),
}

impl Account {
    /// The account of `provider`; [`CloudError::MissingKey`] without a key.
    pub fn new(cfg: &CloudConfig, provider: Provider) -> Result<Self, CloudError> {
        cfg.require_key(provider)?;
        Ok(match provider {
            Provider::Vast => Account::Vast(Vast::new(cfg)?),
            Provider::Clore => Account::Clore(Clore::new(cfg)?),
        })
    }

    pub fn provider(&self) -> Provider {
        match self {
            Account::Vast(_) => Provider::Vast,
            Account::Clore(_) => Provider::Clore,
        }
    }

    /// Offers matching `filter`, with their speed filled in (not ranked).
    pub async fn offers(&self, filter: &Filter) -> Result<Vec<Offer>, CloudError> {
        let offers = match self {
            Account::Vast(v) => v.offers(filter, VAST_OFFERS).await?,
            Account::Clore(c) => c.offers(filter).await?,
        };
        Ok(offers.into_iter().filter(|o| filter.accepts(o)).collect())
    }

    /// What must be known before ordering to recognise the new order afterwards: Clore's
    /// active order ids (its orders carry no label). Empty for Vast (labels do that).
    pub async fn before_order(&self) -> Result<Vec<u64>, CloudError> {
        match self {
            Account::Vast(_) => Ok(Vec::new()),
            Account::Clore(c) => c.order_ids().await,
        }
    }

    /// Rents `offer` for `spec`: the instance (order) id. `before` is what
    /// [`Self::before_order`] gave. A Vast instance made but refused (a bid too low) is
    /// destroyed here before the error is returned.
    pub async fn create(
        &self,
        offer: &Offer,
        spec: &RentSpec,
        before: &[u64],
    ) -> Result<u64, CloudError> {
        match self {
            Account::Vast(v) => match v.create(offer.id, spec).await {
                Err(CloudError::CreatedButFailed { provider, id, msg }) => {
                    if let Err(e) = v.destroy(id).await {
                        tracing::warn!(id, "cannot destroy a refused instance yet: {e}");
                    }
                    Err(CloudError::Api { provider, msg })
                }
                other => other,
            },
            Account::Clore(c) => {
                let per_day = spec.bid_usd_per_hour.map(|b| b * 24.0);
                c.create(offer.id, spec, per_day, before).await
            }
        }
    }

    /// Lets `public_key` log in to instance `id`. Clore takes the key with the order.
    pub async fn authorize(&self, id: u64, public_key: &str) -> Result<(), CloudError> {
        match self {
            Account::Vast(v) => v.attach_ssh(id, public_key).await,
            Account::Clore(_) => Ok(()),
        }
    }

    /// Instance `id`, or `None` once the provider no longer knows it (or it ended).
    pub async fn show(&self, id: u64, node_port: u16) -> Result<Option<Instance>, CloudError> {
        match self {
            Account::Vast(v) => v.show(id, node_port).await,
            Account::Clore(c) => Ok(c.orders(node_port).await?.into_iter().find(|o| o.id == id)),
        }
    }

    /// Every instance of the account.
    pub async fn list(&self, node_port: u16) -> Result<Vec<Instance>, CloudError> {
        match self {
            Account::Vast(v) => v.list(node_port).await,
            Account::Clore(c) => c.orders(node_port).await,
        }
    }

    /// Gives instance `id` back. One already gone counts as given back.
    pub async fn destroy(&self, id: u64) -> Result<(), CloudError> {
        match self {
            Account::Vast(v) => v.destroy(id).await,
            Account::Clore(c) => c.cancel(id).await,
        }
    }
}
