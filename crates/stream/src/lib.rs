//! Stream partitions: append-only segment files of CRC-checked record batches with sparse
//! offset and time indexes, torn-tail recovery, retention by age and size, and compaction
//! by key. Knows nothing of jobs, HTTP or consumer groups. The layout is in
//! docs/design/stream-format.md; the API's binary encoding is the same batch layout.

pub mod batch;
mod partition;
pub mod partitioner;

pub use batch::{BatchHeader, Record};
pub use partition::{
    Appended, Compacted, CompactionPlan, Partition, PartitionConfig, Recovery, Rewrite,
    StreamError, ENCODED_CHUNK_BYTES,
};
pub use partitioner::partition_for_key;
