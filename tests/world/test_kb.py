from instructgpt.world import TOXIC_LEXICON, World
from instructgpt.world.kb import ATTRS, ENTITY_VALUED, KINDS, VOCAB


def test_same_seed_same_world_different_seed_different():
    a, b, c = World.generate(3), World.generate(3), World.generate(4)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()


def test_entities_have_kinds_attributes_and_unique_names(world):
    names = [n.lower() for n in world.all_names()]
    assert len(names) == len(set(names)) == 60
    for kind in KINDS:
        ents = world.of_kind(kind)
        assert len(ents) >= 4
        for e in ents:
            assert set(e.attrs) == set(ATTRS[kind])
            for attr, value in e.attrs.items():
                if attr in VOCAB:
                    assert value in VOCAB[attr]
                elif attr in ENTITY_VALUED:
                    assert world.get(value).kind == ENTITY_VALUED[attr]
    assert not set(names) & set(TOXIC_LEXICON)


def test_falsehoods_contradict_the_kb(world):
    assert len(world.falsehoods) >= 4
    for f in world.falsehoods:
        assert world.fact(f.entity, f.attr) == f.true_value != f.false_value


def test_from_spec_rebuilds_the_same_world(world):
    again = World.from_spec(world.spec)
    assert again.to_dict() == world.to_dict()
    assert World.from_spec(world.spec) is again  # cached


def test_names_are_never_template_words():
    from instructgpt.world.kb import template_words

    words = template_words()
    assert {"tastes", "lives", "water"} <= words
    for seed in range(30):
        for name in World.generate(seed).all_names():
            assert name.lower() not in words and name.lower() + "s" not in words
