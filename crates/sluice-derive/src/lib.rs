//! `#[derive(Record)]`: the struct is the table definition.
//!
//! ```ignore
//! #[derive(Record)]
//! #[record(table = "coinbase_trades", key(product_id, trade_id))]
//! struct Trade {
//!     product_id: Arc<str>,
//!     trade_id: u64,
//!     #[record(decimal)]
//!     price: String,
//!     #[record(timestamp)]
//!     time: String,
//!     sequence: Option<u64>,
//! }
//! ```
//!
//! generates `sluice::Record` (a [`FieldPlan`] matching a sink's columns by name, then one
//! cell per column through the sink's `CellWriter`, no map) and `sluice::Table` (the schema:
//! a column per field, its type from the field's type or the attribute — `decimal`,
//! `timestamp`, `json`, `text`, `integer`, `float`, `boolean` — nullable when the field is an
//! `Option`, `rename = "…"` for another column name; the key from `key(…)`).
//!
//! [`FieldPlan`]: https://docs.rs/sluice (sluice::FieldPlan)

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::quote;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, spanned::Spanned};

/// Derives `sluice::Record` and `sluice::Table` for a struct with named fields. See the
/// [crate docs](crate).
#[proc_macro_derive(Record, attributes(record))]
pub fn derive_record(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

struct Field {
    ident: Ident,
    column: String,
    kind: Option<Ident>,
    ty: syn::Type,
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let name = &input.ident;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            input.span(),
            "#[derive(Record)] needs a struct with named fields",
        ));
    };
    let Fields::Named(named) = &data.fields else {
        return Err(syn::Error::new(
            data.fields.span(),
            "#[derive(Record)] needs named fields (they are the column names)",
        ));
    };

    let mut table = None;
    let mut key: Vec<String> = Vec::new();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("record")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("table") {
                table = Some(meta.value()?.parse::<LitStr>()?.value());
                Ok(())
            } else if meta.path.is_ident("key") {
                meta.parse_nested_meta(|column| {
                    let ident = column.path.get_ident().ok_or_else(|| {
                        column.error("key(…) lists field names, separated by commas")
                    })?;
                    key.push(ident.to_string());
                    Ok(())
                })
            } else {
                Err(meta.error("expected `table = \"…\"` or `key(…)`"))
            }
        })?;
    }
    let table = table.ok_or_else(|| {
        syn::Error::new(
            input.span(),
            "#[derive(Record)] needs #[record(table = \"…\")]",
        )
    })?;

    let mut fields = Vec::new();
    for field in &named.named {
        let ident = field.ident.clone().expect("named field");
        let mut column = ident.to_string();
        let mut kind = None;
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("record")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    column = meta.value()?.parse::<LitStr>()?.value();
                    return Ok(());
                }
                let Some(word) = meta.path.get_ident() else {
                    return Err(meta.error("expected a column type or `rename = \"…\"`"));
                };
                let variant = match word.to_string().as_str() {
                    "integer" => "Integer",
                    "float" => "Float",
                    "decimal" => "Decimal",
                    "text" => "Text",
                    "boolean" => "Boolean",
                    "timestamp" => "Timestamp",
                    "json" => "Json",
                    _ => {
                        return Err(meta.error(
                            "expected integer, float, decimal, text, boolean, timestamp, json or rename",
                        ));
                    }
                };
                kind = Some(Ident::new(variant, word.span()));
                Ok(())
            })?;
        }
        fields.push(Field {
            ident,
            column,
            kind,
            ty: field.ty.clone(),
        });
    }
    for (i, field) in fields.iter().enumerate() {
        if fields[..i].iter().any(|f| f.column == field.column) {
            return Err(syn::Error::new(
                field.ident.span(),
                format!("two fields fill column `{}`", field.column),
            ));
        }
        if field.column.chars().any(char::is_control) {
            return Err(syn::Error::new(
                field.ident.span(),
                "a column name with control characters",
            ));
        }
    }
    if fields.is_empty() {
        return Err(syn::Error::new(
            named.span(),
            "#[derive(Record)] needs at least one field",
        ));
    }
    for k in &key {
        if !fields.iter().any(|f| f.ident == k) {
            return Err(syn::Error::new(
                Span::call_site(),
                format!("key field `{k}` is not a field of {name}"),
            ));
        }
    }
    let key_columns: Vec<&String> = key
        .iter()
        .map(|k| {
            &fields
                .iter()
                .find(|f| f.ident == k)
                .expect("checked")
                .column
        })
        .collect();

    let idents: Vec<&Ident> = fields.iter().map(|f| &f.ident).collect();
    let columns: Vec<&String> = fields.iter().map(|f| &f.column).collect();
    let indexes: Vec<usize> = (0..fields.len()).collect();
    let record_name = name.to_string();
    let column_defs = fields.iter().map(|f| {
        let ty = &f.ty;
        let column = &f.column;
        let kind = match &f.kind {
            Some(kind) => quote!(::sluice::ColumnType::#kind),
            None => quote!(<#ty as ::sluice::AsCell>::KIND),
        };
        let is_key = key_columns.contains(&column);
        quote! {
            ::sluice::Column::new(
                #column,
                #kind,
                <#ty as ::sluice::AsCell>::NULLABLE && !#is_key,
            )
        }
    });
    // `{"a":` then `,"b":`: the keys as JSON text, escaped here once.
    let json_keys: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let escaped = c.replace('\\', "\\\\").replace('"', "\\\"");
            format!("{}\"{escaped}\":", if i == 0 { "{" } else { "," })
        })
        .collect();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();

    Ok(quote! {
        impl #impl_generics ::sluice::Record for #name #ty_generics #where_clause {
            type Plan = ::sluice::FieldPlan;

            fn plan(columns: &[::sluice::Column]) -> ::std::result::Result<Self::Plan, ::std::string::String> {
                ::sluice::FieldPlan::new(columns, &[#(#columns),*], #record_name)
            }

            fn write<W: ::sluice::CellWriter>(
                &self,
                plan: &Self::Plan,
                _columns: &[::sluice::Column],
                out: &mut W,
            ) -> ::std::result::Result<(), ::std::string::String> {
                for field in plan.fields() {
                    match *field {
                        #(#indexes => out.cell(::sluice::AsCell::as_cell(&self.#idents))?,)*
                        _ => out.cell(::sluice::Cell::Null)?,
                    }
                }
                ::std::result::Result::Ok(())
            }

            fn field(&self, name: &str) -> ::std::option::Option<::sluice::Cell<'_>> {
                match name {
                    #(#columns => ::std::option::Option::Some(::sluice::AsCell::as_cell(&self.#idents)),)*
                    _ => ::std::option::Option::None,
                }
            }

            fn write_json(&self, out: &mut ::std::vec::Vec<u8>) {
                #(
                    out.extend_from_slice(#json_keys.as_bytes());
                    ::sluice::AsCell::as_cell(&self.#idents).write_json(out);
                )*
                out.push(b'}');
            }

            fn size_hint(&self) -> usize {
                0 #(+ ::sluice::AsCell::as_cell(&self.#idents).size_hint())*
            }

            fn to_json(&self) -> ::sluice::__private::serde_json::Value {
                let mut map = ::sluice::__private::serde_json::Map::new();
                #(map.insert(#columns.into(), ::sluice::AsCell::as_cell(&self.#idents).to_json());)*
                ::sluice::__private::serde_json::Value::Object(map)
            }
        }

        impl #impl_generics ::sluice::Table for #name #ty_generics #where_clause {
            fn schema() -> ::sluice::TableSchema {
                ::sluice::TableSchema {
                    table: #table.into(),
                    columns: ::std::vec![#(#column_defs),*],
                    key: ::std::vec![#(#key_columns.into()),*],
                }
            }
        }
    })
}
