//! Raw SQL written once with `?` placeholders, rendered for the connected backend.

use sea_orm::{DbBackend, Statement, Value};

/// Builds a statement, turning `?` into `$1, $2, ...` for PostgreSQL.
/// The SQL must contain no `?` other than placeholders.
pub(super) fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => numbered(sql),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Appends `rows` copies of the placeholder tuple `row` (such as `(?, ?)`),
/// comma-separated: the rows of a multi-row `VALUES` list.
pub(super) fn push_rows(sql: &mut String, rows: usize, row: &str) {
    sql.reserve(rows * (row.len() + 2));
    for n in 0..rows {
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
}

/// Appends a `VALUES` list of string pairs (`(?, ?), ...`) to `sql`, to join
/// a batch's keys on, and returns the values in order.
pub(super) fn push_pairs<'a>(sql: &mut String, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Value> {
    let values: Vec<Value> = pairs.into_iter().flat_map(|(a, b)| [a.into(), b.into()]).collect();
    push_rows(sql, values.len() / 2, "(?, ?)");
    values
}

fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_for_postgres_only() {
        let pg = stmt(DbBackend::Postgres, "a = ? AND b IN (?, ?)", vec![1.into(), 2.into(), 3.into()]);
        assert_eq!(pg.sql, "a = $1 AND b IN ($2, $3)");
        let lite = stmt(DbBackend::Sqlite, "a = ?", vec![1.into()]);
        assert_eq!(lite.sql, "a = ?");
    }

    #[test]
    fn rows_and_pairs_make_values_lists() {
        let mut sql = String::from("VALUES ");
        push_rows(&mut sql, 3, "(?, 1)");
        assert_eq!(sql, "VALUES (?, 1), (?, 1), (?, 1)");
        let mut sql = String::new();
        let values = push_pairs(&mut sql, [("a", "b"), ("c", "d")]);
        assert_eq!(sql, "(?, ?), (?, ?)");
        assert_eq!(values, ["a", "b", "c", "d"].map(Value::from));
    }
}
