//! Push of config releases over the fabric (SPEC 6.2 "subscription"): the
//! agent that runs a config center announces every batch it releases on the
//! config channel (sealed like every message when encryption is on); every
//! other switch hands what it hears to its device side, which asks its
//! center at once. Long polling stays the fallback, so a lost announcement
//! only delays a device until its next poll.

use super::{task::Task, wire::ConfigAnnounce, wire::Message};
use crate::bus;

impl Task {
    /// The local center released a version: tell the fabric.
    pub(super) fn announce_release(&mut self, release: bus::ConfigReleased) {
        if !self.connected {
            self.count("releases_unannounced");
            return;
        }
        let message = Message::ConfigAnnounce(ConfigAnnounce {
            origin: self.identity.clone(),
            key: release.key,
            version: release.version,
            md5: release.md5,
        });
        self.publish(&message);
        self.count("releases_announced");
    }

    /// Another switch's center released a version: the local device side
    /// decides whether it concerns it.
    pub(super) fn heard_release(&mut self, announce: ConfigAnnounce) {
        self.count("releases_heard");
        // No receiver (no device side here) is fine.
        let _ = self.releases_heard.send(bus::ConfigReleased {
            key: announce.key,
            version: announce.version,
            md5: announce.md5,
        });
    }
}
