//! `cotmae search`: exact inner-product top-k of encoded queries against an encoded corpus (one
//! or several shards), written as a ranking file `qid \t pid \t score` (see
//! [`retrieval::search`]).

use std::path::PathBuf;

use clap::Args;
use retrieval::ids::UniqueIds;
use retrieval::{search_blocks, EmbeddingSet, RunWriter, SearchOptions};

use super::{with_threads, CliResult};
use crate::device::open_device;

/// Flag names from the issue; Tevatron's `faiss_retriever` names are accepted as aliases.
#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct SearchArgs {
    /// Encoded queries: a directory with embeddings.safetensors and ids.txt.
    #[arg(long, alias = "query_reps")]
    pub queries: PathBuf,
    /// Encoded corpus: one or more such directories (shards), searched as one corpus.
    #[arg(long, alias = "passage_reps", num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// Hits per query.
    #[arg(long, default_value_t = 1000)]
    pub depth: usize,
    /// Ranking file to write.
    #[arg(long, alias = "save_ranking_to")]
    pub output: PathBuf,
    /// Queries searched together (memory: batch_size x 4096 scores); 0: 1024.
    #[arg(long, alias = "batch-size", default_value_t = 0)]
    pub batch_size: usize,
    /// Worker threads (0: all cores). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where the scores and the per-block top-k are computed: cpu, cuda or cuda:N (the corpus
    /// is then uploaded whole; depth at most 2048).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The corpus shards, each read with its ids and values checked ([`EmbeddingSet::read`]); a
/// pid in two rows (of one shard or two) is an error naming both `ids.txt` lines, and a corpus
/// without a passage is an error rather than an empty ranking.
fn read_corpus(dirs: &[PathBuf]) -> CliResult<Vec<EmbeddingSet>> {
    let mut seen = UniqueIds::default();
    let mut shards = Vec::new();
    for dir in dirs {
        let set = EmbeddingSet::read(dir)?;
        let ids_path = dir.join(retrieval::embeddings::IDS_FILE);
        for (i, id) in set.ids.iter().enumerate() {
            seen.insert(&ids_path, i + 1, id)?;
        }
        shards.push(set);
    }
    if shards.iter().all(EmbeddingSet::is_empty) {
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(format!(
            "search: the corpus ({}) holds no passage; nothing to rank against",
            names.join(", ")
        )
        .into());
    }
    Ok(shards)
}

pub fn run(a: SearchArgs) -> CliResult {
    let device = open_device(&a.device)?;
    let queries = EmbeddingSet::read(&a.queries)?;
    let mut qids = UniqueIds::default();
    for (i, id) in queries.ids.iter().enumerate() {
        qids.insert(&a.queries.join(retrieval::embeddings::IDS_FILE), i + 1, id)?;
    }
    let shards = read_corpus(&a.corpus)?;
    let pids: Vec<&str> = shards
        .iter()
        .flat_map(|s| s.ids.iter().map(String::as_str))
        .collect();
    let tensors: Vec<&tensor::Tensor> = shards.iter().map(|s| &s.embeddings).collect();
    let opts = SearchOptions {
        depth: a.depth,
        query_block: a.batch_size,
        device,
        ..SearchOptions::default()
    };
    let mut out = RunWriter::create(&a.output)?;
    with_threads(a.threads, || {
        search_blocks(&queries.embeddings, &tensors, &opts, |first, hits| {
            for (qid, hits) in queries.ids[first..].iter().zip(&hits) {
                out.write_query(qid, hits.iter().map(|h| (pids[h.index as usize], h.score)))?;
            }
            Ok(())
        })
    })??;
    let path = out.finish()?;
    eprintln!(
        "search: {} queries x {} passages ({} shards), depth {}: wrote {}",
        queries.len(),
        pids.len(),
        shards.len(),
        a.depth,
        path.display()
    );
    Ok(())
}
