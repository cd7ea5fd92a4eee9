// The bundle's tokenizer.json through @huggingface/tokenizers (pure JavaScript), set up to give
// the ids and text that the Python `tokenizers` library gives for the same file.

import { Tokenizer } from "@huggingface/tokenizers";

import { BundleError } from "./errors.js";

/**
 * @param {string} text tokenizer.json's contents
 * @param {string} where how errors name the file
 * @returns {{encode: (text: string) => number[], decode: (ids: number[]) => string, vocabSize: number}}
 */
export function loadTokenizer(text, where) {
  let tok;
  try {
    const json = JSON.parse(text);
    const config = {
      // Python's Tokenizer.decode does no clean-up; the JS library's default would turn " ." into "."
      clean_up_tokenization_spaces: false,
    };
    if (json.model?.type === "WordLevel") {
      // the JS library reads a word-level model's unknown token from the config, not the model
      config.unk_token = json.model.unk_token;
    }
    tok = new Tokenizer(json, config);
  } catch (e) {
    throw new BundleError(`${where} cannot be loaded (${String(e?.message ?? e).split("\n")[0]})`);
  }
  return {
    // Python: tokenizer.encode(text, add_special_tokens=False).ids
    encode: (t) => tok.encode(t, { add_special_tokens: false }).ids,
    // Python: tokenizer.decode(ids, skip_special_tokens=True) (the JS library refuses [])
    decode: (ids) => (ids.length ? tok.decode(ids, { skip_special_tokens: true }) : ""),
    vocabSize: tok.get_vocab(true).size,
  };
}
