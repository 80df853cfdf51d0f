//! Staged rule queries: a CTE that a rule's query would compute more than once is computed
//! once, first, and read back as a table.
//!
//! DataFusion inlines every CTE reference, so a CTE read by three joins is planned and run
//! three times (window sorts and all); DuckDB materializes such CTEs, which is much of its
//! lead on this pack's SQL. [`split`] is syntax only: it parses the rule's query, counts how
//! many times each CTE would be evaluated — a CTE read by another that is itself inlined
//! twice is evaluated twice as often — and turns every CTE evaluated at least twice into a
//! stage, in definition order. A stage's SQL is `WITH <the CTEs it needs> SELECT * FROM
//! <cte>`; the engine runs it, registers the rows under the stage's table name, and the CTE's
//! body becomes `SELECT * FROM <table>` in every later stage and in the final query. Names,
//! columns and qualifiers are untouched, so the final query means what the rule wrote.
//!
//! Anything this does not understand (not one query, `WITH RECURSIVE`, a CTE name defined
//! twice, a parse error) comes back as a plain query: DataFusion then reports the rule's
//! own errors as it would have.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{ObjectNamePart, Query, Statement, With, visit_relations};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// A CTE computed ahead of the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// The CTE's name in the rule.
    pub cte: String,
    /// The table its rows are registered under while the rule runs.
    pub table: String,
    /// The query that computes it.
    pub sql: String,
}

/// A rule's query as stages and the final query that reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct Staged {
    pub stages: Vec<Stage>,
    pub query: String,
}

/// Splits `sql` into stages; `table_prefix` makes the stage tables' names (`{prefix}{cte}`),
/// so it must be unique among the queries that share a session. Returns `sql` unchanged
/// (no stages) when no CTE is evaluated twice or the text is not one plain query.
pub fn split(sql: &str, table_prefix: &str) -> Staged {
    let plain = || Staged {
        stages: Vec::new(),
        query: sql.to_string(),
    };
    let Ok(mut statements) = Parser::parse_sql(&GenericDialect {}, sql) else {
        return plain();
    };
    if statements.len() != 1 {
        return plain();
    }
    let Statement::Query(mut query) = statements.remove(0) else {
        return plain();
    };
    let Some(with) = query.with.take() else {
        return plain();
    };
    if with.recursive {
        return plain();
    }
    let names: Vec<String> = with
        .cte_tables
        .iter()
        .map(|c| normalized(&c.alias.name.value, c.alias.name.quote_style))
        .collect();
    if names.iter().collect::<HashSet<_>>().len() != names.len() {
        return plain();
    }
    let n = names.len();
    // refs[i][j]: how often CTE i's body reads CTE j (j < i: a CTE sees only earlier ones);
    // main[j]: how often the final query reads it.
    let refs: Vec<Vec<usize>> = with
        .cte_tables
        .iter()
        .enumerate()
        .map(|(i, c)| references(&c.query, &names[..i], n))
        .collect();
    let main = references(&query, &names, n);

    // Evaluations, from the last CTE back: a materialized reader counts once.
    let mut evals = vec![0usize; n];
    let mut staged = vec![false; n];
    for j in (0..n).rev() {
        evals[j] = main[j]
            + (j + 1..n)
                .map(|i| refs[i][j] * if staged[i] { 1 } else { evals[i] })
                .sum::<usize>();
        staged[j] = evals[j] >= 2;
    }
    if !staged.contains(&true) {
        return plain();
    }

    let mut ctes = with.cte_tables.clone();
    let mut stages = Vec::new();
    for j in 0..n {
        if !staged[j] {
            continue;
        }
        // The CTEs stage j reads, directly or through others (stopping at staged ones,
        // which are table scans by now).
        let mut need = vec![false; n];
        need[j] = true;
        for i in (0..=j).rev() {
            if need[i] && (i == j || !staged[i]) {
                for (k, r) in refs[i].iter().enumerate() {
                    if *r > 0 {
                        need[k] = true;
                    }
                }
            }
        }
        let mut q = select_all(&names[j]);
        q.with = Some(With {
            cte_tables: (0..=j)
                .filter(|k| need[*k])
                .map(|k| ctes[k].clone())
                .collect(),
            ..with.clone()
        });
        let table = format!("{table_prefix}{}", names[j]);
        stages.push(Stage {
            cte: names[j].clone(),
            table: table.clone(),
            sql: q.to_string(),
        });
        // From here on the CTE reads the stage's table; its column aliases are already the
        // table's column names.
        *ctes[j].query = select_all(&table);
        ctes[j].alias.columns.clear();
        ctes[j].materialized = None;
    }
    query.with = Some(With {
        cte_tables: ctes,
        ..with
    });
    Staged {
        stages,
        query: query.to_string(),
    }
}

/// `SELECT * FROM <name>` as a query (the name is a CTE's or a stage table's: a plain
/// identifier, or quoted when it needs to be).
fn select_all(name: &str) -> Query {
    let ident = if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    };
    match Parser::parse_sql(&GenericDialect {}, &format!("SELECT * FROM {ident}"))
        .ok()
        .and_then(|mut s| s.pop())
    {
        Some(Statement::Query(q)) => *q,
        _ => unreachable!("a SELECT * of one identifier always parses"),
    }
}

/// How DataFusion resolves an identifier: unquoted ones fold to lower case.
fn normalized(value: &str, quote: Option<char>) -> String {
    match quote {
        None => value.to_lowercase(),
        Some(_) => value.to_string(),
    }
}

/// How many times `q` reads each of `names` as a relation (a one-part name).
fn references(q: &Query, names: &[String], n: usize) -> Vec<usize> {
    let mut out = vec![0usize; n];
    let _ = visit_relations(q, |rel| {
        if let [ObjectNamePart::Identifier(id)] = rel.0.as_slice() {
            let name = normalized(&id.value, id.quote_style);
            if let Some(k) = names.iter().position(|x| *x == name) {
                out[k] += 1;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cte_read_once_stays_inline() {
        let sql = "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b";
        let s = split(sql, "st_");
        assert!(s.stages.is_empty());
    }

    #[test]
    fn a_cte_read_twice_becomes_a_stage_and_keeps_its_name() {
        let sql = "WITH a AS (SELECT device_id, COUNT(*) AS n FROM samples GROUP BY device_id), \
                   b AS (SELECT * FROM a WHERE n > 1) \
                   SELECT a.device_id FROM a JOIN b ON a.device_id = b.device_id";
        let s = split(sql, "st_");
        assert_eq!(s.stages.len(), 1);
        assert_eq!(s.stages[0].cte, "a");
        assert_eq!(s.stages[0].table, "st_a");
        assert_eq!(
            s.stages[0].sql,
            "WITH a AS (SELECT device_id, COUNT(*) AS n FROM samples GROUP BY device_id) SELECT * FROM a"
        );
        assert_eq!(
            s.query,
            "WITH a AS (SELECT * FROM st_a), b AS (SELECT * FROM a WHERE n > 1) \
             SELECT a.device_id FROM a JOIN b ON a.device_id = b.device_id"
        );
    }

    #[test]
    fn evaluations_multiply_through_inlined_readers() {
        // c reads a once, but c is read twice: a is evaluated twice through c, and c itself
        // is staged, so a is then evaluated once (inside c's stage) and stays inline.
        let sql = "WITH a AS (SELECT 1 AS x), c AS (SELECT x FROM a), \
                   d AS (SELECT x FROM c UNION ALL SELECT x FROM c) SELECT * FROM d";
        let s = split(sql, "p_");
        let staged: Vec<&str> = s.stages.iter().map(|s| s.cte.as_str()).collect();
        assert_eq!(staged, ["c"]);
        assert_eq!(
            s.stages[0].sql,
            "WITH a AS (SELECT 1 AS x), c AS (SELECT x FROM a) SELECT * FROM c"
        );
        // Read twice by a CTE that is itself inlined twice: four evaluations, staged; the
        // later stage reads the earlier one's table.
        let sql = "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a UNION ALL SELECT x FROM a) \
                   SELECT * FROM b JOIN b b2 ON b.x = b2.x";
        let s = split(sql, "p_");
        let staged: Vec<&str> = s.stages.iter().map(|s| s.cte.as_str()).collect();
        assert_eq!(staged, ["a", "b"]);
        assert_eq!(
            s.stages[1].sql,
            "WITH a AS (SELECT * FROM p_a), b AS (SELECT x FROM a UNION ALL SELECT x FROM a) \
             SELECT * FROM b"
        );
    }

    #[test]
    fn column_aliases_and_subquery_references_count() {
        let sql = "WITH a(x) AS (SELECT 1) \
                   SELECT x FROM a WHERE EXISTS (SELECT 1 FROM a a2 WHERE a2.x = a.x)";
        let s = split(sql, "p_");
        assert_eq!(s.stages.len(), 1);
        assert_eq!(s.stages[0].sql, "WITH a (x) AS (SELECT 1) SELECT * FROM a");
        assert!(
            s.query
                .starts_with("WITH a AS (SELECT * FROM p_a) SELECT x FROM a WHERE EXISTS")
        );
    }

    /// Every built-in rule parses here (a parse failure would quietly leave it inlined),
    /// and the rules whose CTEs repeat get stages.
    #[test]
    fn every_builtin_rule_parses_and_repeated_ctes_are_staged() {
        let pack = crate::rules::pack::load(&crate::rules::PackSource::builtin())
            .expect("the built-in pack loads");
        let mut staged = 0;
        for rule in &pack.rules {
            let sql =
                rule.render_sql(&[("eval_start_ms", "0".into()), ("eval_end_ms", "1".into())]);
            let parsed = Parser::parse_sql(&GenericDialect {}, &sql);
            assert!(parsed.is_ok(), "{}: {:?}", rule.id, parsed.err());
            let s = split(&sql, "p_");
            staged += usize::from(!s.stages.is_empty());
            for st in &s.stages {
                assert!(
                    Parser::parse_sql(&GenericDialect {}, &st.sql).is_ok(),
                    "{}",
                    st.sql
                );
            }
        }
        assert!(staged >= 10, "only {staged} rules have stages");
    }

    #[test]
    fn what_it_does_not_understand_is_left_alone() {
        for sql in [
            "SELECT 1",
            "SELECT * FROM (",
            "WITH RECURSIVE a AS (SELECT 1 AS x) SELECT * FROM a JOIN a b ON true",
            "WITH a AS (SELECT 1), a AS (SELECT 2) SELECT * FROM a, a",
            "SELECT 1; SELECT 2",
        ] {
            let s = split(sql, "p_");
            assert!(s.stages.is_empty(), "{sql}");
            assert_eq!(s.query, sql);
        }
    }
}
