//! How drover words what it says: counts with the right plural, and log
//! lines about repeated events kept to a readable rate.

pub mod ratelimit;
pub mod wording;
