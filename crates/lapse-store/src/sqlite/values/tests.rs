//! How a batch's rows are laid out as `values` lists, and what cannot be bound.

use super::*;

#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    count: i64,
    flag: bool,
    gone: Option<&'a str>,
}

#[test]
fn rows_become_numbered_chunks_of_two_sizes_padded_with_nulls() {
    let rows = |n: i64| -> Vec<Row> {
        (0..n)
            .map(|n| Row {
                id: "s",
                count: n,
                flag: n % 2 == 0,
                gone: None,
            })
            .collect()
    };
    let shape = |n| {
        chunks(&rows(n))
            .unwrap()
            .iter()
            .map(|c| (c.rows, c.size))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        shape(1000),
        [(256, 256), (256, 256), (256, 256), (232, 256)]
    );
    assert_eq!(shape(65), [(65, 256)]);
    assert_eq!(shape(40), [(16, 16), (16, 16), (8, 16)]);
    assert_eq!(shape(1), [(1, 16)]);

    let two = chunks(&rows(2)).unwrap();
    let table = two[0].table();
    assert!(
        table.starts_with("b(pos, id, count, flag, gone) as (values (?, ?, ?, ?, ?), "),
        "{table}"
    );
    assert_eq!(table.matches("(?, ?, ?, ?, ?)").count(), 16);
    use sqlx::Arguments as _;
    // Every row is bound, the padding as nulls.
    assert_eq!(two[0].args.len(), 16 * 5);
}

#[test]
fn a_field_no_column_takes_is_refused() {
    #[derive(Serialize)]
    struct Listy {
        tags: Vec<&'static str>,
    }
    let err = chunks(&[Listy { tags: vec!["a"] }]).err().unwrap();
    assert!(err.to_string().contains("list"), "{err}");
}
