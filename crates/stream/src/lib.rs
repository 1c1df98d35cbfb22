//! Stream partitions: append-only segment files of CRC-checked record batches with sparse
//! offset and time indexes, torn-tail recovery, and retention by age and size. Knows
//! nothing of jobs, HTTP or consumer groups. The layout is in docs/design/stream-format.md.

pub mod batch;
mod partition;

pub use batch::{BatchHeader, Record};
pub use partition::{Appended, Partition, PartitionConfig, Recovery, StreamError};
